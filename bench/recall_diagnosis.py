"""What a stage-2 model's LFB recall knows about the long-term classes (docs/demo-bundle.md).

    python bench/recall_diagnosis.py --checkpoint CKPT --data WORLD --bank BANKDIR [--split val]

For every annotated person of the split (ground-truth boxes, the bank's rows), computes the
recall features (`models.lfb.LFB`, "Recall": per time bin, the best same-person bank row's
class score) and prints, for each long-term class of the synthetic world and its evidence
event, how well the recall feature "evidence class in bin b" alone ranks the long-term
label (ROC AUC and the evaluator's VOC average precision), plus the row classifier's own AP
on the evidence event. Nothing is trained; the figures are a property of the checkpoint
and the bank.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BINS = ("long ago", "recently", "now", "ahead")


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half."""
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, required=True, help="stage-2 final.pt (recall)")
    ap.add_argument("--data", type=Path, required=True, help="the world directory")
    ap.add_argument("--bank", type=Path, required=True, help="extract-bank output (GT boxes)")
    ap.add_argument("--split", default="val")
    args = ap.parse_args()

    import torch

    def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
        """The evaluator's VOC AP, every person a candidate."""
        return voc_ap(scores.astype(np.float64), labels, int(labels.sum()))

    from training.bank_extract import load_bank
    from training.dataset import BankFeatureDataset, plain_entries
    from training.evaluation import average_precision as voc_ap
    from training.train import load_split, load_trained_model
    from training.world.classes import LONG_TERM

    model, config, _ = load_trained_model(args.checkpoint)
    model.eval()
    lfb = model.lfb
    if lfb is None or lfb.recall is None:
        sys.exit(f"{args.checkpoint}: no LFB recall (train stage 2 with --bank-recall)")
    data = load_split(args.data, args.split)
    dataset = BankFeatureDataset(
        data.keyframes,
        plain_entries(data.keyframes, data.labels),
        load_bank(args.bank, args.split),
        bank_window_seconds=config.bank_window_seconds,
        bank_persons=config.bank_persons_per_second,
    )
    recalls, rows, targets = [], [], []
    with torch.no_grad():
        for i in range(len(dataset)):
            b = dataset[i]
            assert b.person_features is not None and b.bank is not None
            assert b.bank_mask is not None
            k = b.person_features.shape[0]
            recall = lfb._recall(b.person_features, b.bank[:1], b.bank_mask)
            recalls.append(recall.view(k, -1, lfb.recall_classes).numpy())
            rows.append(torch.sigmoid(lfb.recall_logits(b.person_features)).numpy())
            targets.append(b.targets.numpy() > 0)
    recall_all = np.concatenate(recalls)  # (N, B, C)
    row_all = np.concatenate(rows)  # (N, C)
    y = np.concatenate(targets)  # (N, C) bool
    ids = list(model.class_ids)
    print(f"{len(y)} persons of {args.split}; {recall_all.shape[1]} time bins")
    for state_id, (event_id, _) in sorted(LONG_TERM.items()):
        if state_id not in ids or event_id not in ids:
            continue
        e, s = ids.index(event_id), ids.index(state_id)
        print(
            f"class {state_id} (evidence {event_id}): row classifier AP on {event_id} "
            f"{average_precision(y[:, e], row_all[:, e]):.3f}"
        )
        for b, name in enumerate(BINS[: recall_all.shape[1]]):
            f = recall_all[:, b, e]
            print(
                f"  recall[{name:8s}, {event_id}] vs label {state_id}: "
                f"AUC {roc_auc(y[:, s], f):.3f}  AP {average_precision(y[:, s], f):.3f}  "
                f"mean positive {f[y[:, s]].mean():.3f} negative {f[~y[:, s]].mean():.3f}"
            )


if __name__ == "__main__":
    main()
