"""The project's own person detector (issue 4, item 6): a small CenterNet-style network
trained from scratch on a dataset's keyframe boxes, and its ``detector.onnx`` export.

* ``model.py``  -- network, target encoding, decode (peaks + top-K), NMS, `detector_spec`.
* ``data.py``   -- keyframe images from a dataset dir; training augmentation on the canvas.
* ``train.py``  -- `train_detector` (plain loop, CSV log, checkpoint ``detector.pt``).
* ``eval.py``   -- person AP@0.5 (VOC all-point), threshold sweep, proposals CSV.
* ``export.py`` -- `export_detector_onnx`: the uniform detector contract with NMS in-graph.
* ``cli.py``    -- ``avaserve train-detector`` / ``avaserve eval-detector``.

Nothing is imported here, so ``import training.detector.cli`` stays light.
"""
