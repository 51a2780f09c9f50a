"""Evaluation with the paper's protocols.

- :mod:`~unihema.evaluate.metrics`: the metric functions (COCO AP, F1s, Dice/IoU, BLEU-4, ROUGE-L ...);
- :mod:`~unihema.evaluate.evaluator`: run a model over the samples of one task and score it;
- :mod:`~unihema.evaluate.probe`: the DinoBloom single-cell probe on frozen features;
- :mod:`~unihema.evaluate.suite`: several datasets and tasks under one progress bar, seen or unseen;
- :mod:`~unihema.evaluate.tables` and :mod:`~unihema.evaluate.plots`: the Table 1 / Table 2 report;
- :mod:`~unihema.evaluate.report`: the demo's before/after report.
"""
