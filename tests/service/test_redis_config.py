"""The Redis configuration we ship (docker/redis.conf, the k8s ConfigMap) really persists jobs.

The job queue lives only in Redis: a queued job survives a Redis crash only with persistence.
Both shipped configs turn on the append-only file (fsync every second) and noeviction; a real
redis-server started with docker/redis.conf and SIGKILLed still has the queued job afterwards,
while the test default (no persistence) loses it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import redis_server as redis_server_mod
import yaml

from service.jobs import Job, RedisJobStore

REPO = Path(__file__).resolve().parents[2]
DOCKER_CONF = REPO / "docker" / "redis.conf"


def parse_conf(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            key, _, value = line.partition(" ")
            out[key.lower()] = value.strip()
    return out


def k8s_conf() -> dict[str, str]:
    for doc in yaml.safe_load_all((REPO / "k8s" / "redis.yaml").read_text()):
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "avaserve-redis-config":
            return parse_conf(doc["data"]["redis.conf"])
    raise AssertionError("k8s/redis.yaml has no avaserve-redis-config ConfigMap")


def test_shipped_configs_persist_and_never_evict() -> None:
    docker, k8s = parse_conf(DOCKER_CONF.read_text()), k8s_conf()
    for conf in (docker, k8s):
        assert conf["appendonly"] == "yes"
        assert conf["appendfsync"] == "everysec"
        assert conf["maxmemory-policy"] == "noeviction"
    assert {k: v for k, v in k8s.items() if k != "maxmemory"} == docker
    # The Deployment runs redis-server on the mounted ConfigMap.
    docs = list(yaml.safe_load_all((REPO / "k8s" / "redis.yaml").read_text()))
    dep = next(d for d in docs if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert container["args"] == [f"{mount['mountPath']}/redis.conf"]
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == "avaserve-redis-config"
    compose = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())
    redis = compose["services"]["redis"]
    assert "./redis.conf:/usr/local/etc/redis/redis.conf:ro" in redis["volumes"]
    assert redis["command"][-1] == "/usr/local/etc/redis/redis.conf"


async def _queued_after_crash(workdir: Path, config: Path | None, upload: Path) -> bool:
    try:
        server = redis_server_mod.RedisServer(workdir, config=config)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    server.start()
    try:
        store = RedisJobStore(server.url)
        job = Job.new(owner="k", upload_dir=upload)
        await store.submit(job)
        await store.close()
        time.sleep(1.5)  # appendfsync everysec: past the next fsync
        server.kill()  # SIGKILL: no shutdown save
        server.start()
        store = RedisJobStore(server.url)
        got = await store.get(job.id)
        await store.close()
        return got is not None and got.state == "queued"
    finally:
        server.stop()


def test_queued_job_survives_a_redis_crash_only_with_the_shipped_config(tmp_path: Path) -> None:
    (tmp_path / "aof").mkdir()
    (tmp_path / "none").mkdir()
    # The shipped file as is, but for `dir /data` (redis-server changes into it while reading
    # the file, before the command line's --dir applies).
    conf = tmp_path / "redis.conf"
    lines = DOCKER_CONF.read_text().splitlines()
    conf.write_text("\n".join(x for x in lines if not x.startswith("dir ")) + "\n")
    persisted = asyncio.run(_queued_after_crash(tmp_path / "aof", conf, tmp_path))
    lost = asyncio.run(_queued_after_crash(tmp_path / "none", None, tmp_path))
    assert persisted and not lost
