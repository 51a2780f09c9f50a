"""The single-cell probe of DinoBloom: frozen features, a linear and two nearest-neighbour classifiers.

The paper scores single-cell classification on datasets the model never saw (Table 2) the way DinoBloom
scores foundation models (``marrlab/DinoBloom``, ``dinov2/eval/general_*_patch_eval.py``):

1. features: the model stays frozen; each crop gives the SCFE cell feature E_Z
   (``model(images, "classification").features``), optionally concatenated with the backbone's last map
   mean-pooled over the crop (the paper's ablation "backbone + SCFE");
2. classifiers: ``LogisticRegression`` (lbfgs, multinomial, ``max_iter`` 1000) with ``C = M * K / 100``
   (M the feature dimension, K the number of classes: DinoBloom's ``l2_reg = 100 / (M K)``), and
   ``KNeighborsClassifier`` with k = 1 and k = 20 (Euclidean, uniform weights, no feature scaling);
3. protocol: the dataset's own train / test split when it has both, else 5-fold stratified
   cross-validation over all its crops, the fold scores averaged;
4. metrics: accuracy, balanced accuracy, weighted F1 (the headline, DinoBloom's) and macro F1;
5. a t-SNE embedding of the features (``sklearn.manifold.TSNE``) for the figure 4c scatter plot.

``run_probe(model, samples)`` returns a :class:`~unihema.evaluate.evaluator.TaskResult` whose ``metric`` is
``probe_F1_weighted`` (the logistic regression's weighted F1).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from unihema.data.schema import Sample, Task
from unihema.data.vocab import CELL_CLASSES
from unihema.evaluate.evaluator import EvalConfig, EvalRun, Progress, TaskResult
from unihema.validation import is_int, require

PROBE_METRIC = "probe_F1_weighted"
LOGREG_MAX_ITER = 1000
TSNE_PERPLEXITY = 30.0


@dataclass
class ProbeConfig:
    """Settings of the single-cell probe.

    Attributes:
        batch_size: crops per forward pass.
        with_backbone: concatenate the backbone's last feature map, mean-pooled over the crop, to E_Z.
        neighbours: k of the nearest-neighbour classifiers (DinoBloom: 1 and 20); a k larger than the
            training set is lowered to its size.
        folds: stratified folds when the dataset has no train / test split (DinoBloom: 5); lowered to the
            smallest class's size when a class has fewer crops.
        train_split: the split the classifiers are fitted on.
        test_split: the split they are scored on.
        max_iter: lbfgs iterations of the logistic regression (DinoBloom: 1000).
        seed: seed of the folds and of t-SNE.
        tsne_points: at most this many crops (a seeded random choice) go into the t-SNE embedding;
            0 = no embedding.
        transforms: input sizes and normalisation (a :class:`unihema.data.transforms.TransformConfig`),
            ``None`` for its defaults; use the model's.
        pad_to_multiple: batches are padded to a multiple of this many pixels.
    """

    batch_size: int = 32
    with_backbone: bool = False
    neighbours: tuple[int, ...] = (1, 20)
    folds: int = 5
    train_split: str = "train"
    test_split: str = "test"
    max_iter: int = LOGREG_MAX_ITER
    seed: int = 0
    tsne_points: int = 2000
    transforms: Any = None
    pad_to_multiple: int = 32

    def __post_init__(self) -> None:
        self.neighbours = tuple(self.neighbours)
        for name in ("batch_size", "folds", "max_iter", "pad_to_multiple"):
            value = getattr(self, name)
            require(is_int(value) and value >= 1, f"ProbeConfig.{name}", "must be an integer >= 1", value)
        require(self.folds >= 2, "ProbeConfig.folds", "must be at least 2", self.folds)
        require(
            bool(self.neighbours) and all(is_int(k) and k >= 1 for k in self.neighbours),
            "ProbeConfig.neighbours", "must be positive integers", self.neighbours,
        )  # fmt: skip
        require(is_int(self.tsne_points) and self.tsne_points >= 0, "ProbeConfig.tsne_points",
                "must be an integer >= 0", self.tsne_points)  # fmt: skip


@dataclass
class Features:
    """Frozen features of the crops that loaded.

    Attributes:
        features: (N, M) float32.
        labels: (N,) indices into ``CELL_CLASSES``.
        splits: each crop's split (``None`` where the dataset has none).
        skipped: the crops that could not be loaded (see :attr:`TaskResult.skipped`).
    """

    features: np.ndarray
    labels: np.ndarray
    splits: list[str | None]
    skipped: list[dict[str, str]] = field(default_factory=list)


def _pooled_backbone(
    model: torch.nn.Module, images: torch.Tensor, image_mask: torch.Tensor | None
) -> torch.Tensor:
    """The backbone's last map averaged over the unpadded area of each crop: (B, C)."""
    from unihema.model.backbone import downsample_mask

    top = model.backbone(images)[-1]
    if image_mask is None:
        return top.mean(dim=(-2, -1))
    keep = (~downsample_mask(image_mask, top.shape[-2:])).to(top.dtype)[:, None]
    return (top * keep).sum(dim=(-2, -1)) / keep.sum(dim=(-2, -1)).clamp(min=1.0)


@torch.no_grad()
def extract_features(
    model: torch.nn.Module, samples: Sequence[Sample], config: ProbeConfig | None = None,
    progress: Progress | None = None,
) -> Features:  # fmt: skip
    """E_Z (optionally with the pooled backbone map) of every classification crop in ``samples``."""
    config = config or ProbeConfig()
    eval_config = EvalConfig(batch_size=config.batch_size, transforms=config.transforms,
                             pad_to_multiple=config.pad_to_multiple)  # fmt: skip
    was_training = model.training
    model.eval()
    run = EvalRun(eval_config, next(model.parameters()).device, progress)
    features, labels, splits = [], [], []
    try:
        for batch in run.batches(samples, Task.CLASSIFICATION):
            images, image_mask = run.inputs(batch)
            vectors = model(images, Task.CLASSIFICATION, image_mask=image_mask).features
            if config.with_backbone:
                vectors = torch.cat([vectors, _pooled_backbone(model, images, image_mask)], dim=1)
            features.append(vectors.float().cpu().numpy())
            labels.extend(int(t["cell_class"]) for t in batch["targets"])
            splits.extend(s.split for s in batch["samples"])
    finally:
        model.train(was_training)
    return Features(np.concatenate(features), np.asarray(labels, dtype=np.int64), splits, run.skipped)


def logistic_c(feature_dim: int, num_classes: int) -> float:
    """DinoBloom's inverse regularisation strength ``C = M * K / 100``."""
    return feature_dim * num_classes / 100.0


def _scores(prefix: str, truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    with warnings.catch_warnings():
        # A test fold may lack a class the classifier predicts; the scores are defined all the same.
        warnings.simplefilter("ignore", UserWarning)
        return {
            f"{prefix}_accuracy": float(accuracy_score(truth, predicted)),
            f"{prefix}_balanced_accuracy": float(balanced_accuracy_score(truth, predicted)),
            f"{prefix}_f1_weighted": float(f1_score(truth, predicted, average="weighted", zero_division=0)),
            f"{prefix}_f1_macro": float(f1_score(truth, predicted, average="macro", zero_division=0)),
        }


def probe_scores(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
    config: ProbeConfig | None = None,
) -> dict[str, float]:  # fmt: skip
    """Fit the logistic regression and the kNN classifiers on the training features, score them on the test
    features. Keys: ``logreg_*`` and ``knn<k>_*`` (``accuracy``, ``balanced_accuracy``, ``f1_weighted``,
    ``f1_macro``; ``<k>`` as configured), ``C`` and ``knn<k>_k`` (the k used)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    config = config or ProbeConfig()
    num_classes = len(np.unique(train_y))
    c = logistic_c(train_x.shape[1], num_classes)
    scores: dict[str, float] = {"C": c}
    if num_classes < 2:
        # Nothing to separate: every crop is predicted as the one training class.
        scores.update(_scores("logreg", test_y, np.full_like(test_y, train_y[0])))
    else:
        classifier = LogisticRegression(C=c, max_iter=config.max_iter, solver="lbfgs")
        scores.update(_scores("logreg", test_y, classifier.fit(train_x, train_y).predict(test_x)))
    for k in config.neighbours:
        used = min(k, len(train_y))
        knn = KNeighborsClassifier(n_neighbors=used).fit(train_x, train_y)
        scores.update(_scores(f"knn{k}", test_y, knn.predict(test_x)))
        scores[f"knn{k}_k"] = used
    return scores


def cross_validated_scores(
    features: np.ndarray, labels: np.ndarray, config: ProbeConfig | None = None
) -> tuple[dict[str, float], int, list[int]]:
    """:func:`probe_scores` averaged over stratified folds. Classes with a single crop cannot be split and
    are left out. Returns the scores, the number of folds and the classes left out."""
    from sklearn.model_selection import StratifiedKFold

    config = config or ProbeConfig()
    classes, counts = np.unique(labels, return_counts=True)
    dropped = [int(c) for c in classes[counts < 2]]
    kept = ~np.isin(labels, dropped)
    if not kept.any():
        raise ValueError("probe: cross-validation needs at least 2 crops of a class; every class has 1")
    features, labels = features[kept], labels[kept]
    folds = min(config.folds, int(counts[counts >= 2].min()))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    per_fold = [
        probe_scores(features[train], labels[train], features[test], labels[test], config)
        for train, test in splitter.split(features, labels)
    ]
    return {key: float(np.mean([fold[key] for fold in per_fold])) for key in per_fold[0]}, folds, dropped


def tsne_embedding(
    features: np.ndarray, labels: np.ndarray, config: ProbeConfig | None = None
) -> dict[str, Any]:
    """2-D t-SNE of (at most ``tsne_points``) features: ``{"points": (n, 2), "labels": [class names]}``;
    empty when there are fewer than 4 crops or the embedding is switched off."""
    from sklearn.manifold import TSNE

    config = config or ProbeConfig()
    if config.tsne_points == 0 or len(features) < 4:
        return {}
    rng = np.random.default_rng(config.seed)
    chosen = np.sort(rng.permutation(len(features))[: config.tsne_points])
    perplexity = min(TSNE_PERPLEXITY, (len(chosen) - 1) / 3.0)
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=config.seed).fit_transform(
        features[chosen]
    )
    return {"points": points, "labels": [CELL_CLASSES[int(v)] for v in labels[chosen]]}


def probe_crops(samples: Sequence[Sample], config: ProbeConfig | None = None) -> list[Sample]:
    """The crops the probe uses: those of the train and test splits when the dataset has both (the fixed
    split protocol), else all of them (cross-validation)."""
    config = config or ProbeConfig()
    splits = {sample.split for sample in samples}
    if config.train_split in splits and config.test_split in splits:
        return [s for s in samples if s.split in (config.train_split, config.test_split)]
    return list(samples)


def run_probe(
    model: torch.nn.Module, samples: Sequence[Sample], config: ProbeConfig | None = None,
    progress: Progress | None = None,
) -> TaskResult:  # fmt: skip
    """The probe on the classification crops of one dataset (every split: the training split is needed).

    ``details`` holds every score of :func:`probe_scores`, ``protocol`` (``"fixed split"`` or
    ``"<n>-fold stratified CV"``), ``feature_dim``, ``train_crops`` / ``test_crops`` (fixed split) or
    ``crops`` (CV) and ``features`` (what was concatenated); ``artifacts["tsne"]`` the embedding.
    """
    config = config or ProbeConfig()
    if not samples:
        raise ValueError("no classification samples for the probe")
    extracted = extract_features(model, probe_crops(samples, config), config, progress)
    x, y = extracted.features, extracted.labels
    splits = np.asarray([s or "" for s in extracted.splits])
    train, test = splits == config.train_split, splits == config.test_split
    details: dict[str, Any] = {
        "feature_dim": int(x.shape[1]),
        "features": "SCFE E_Z + pooled backbone" if config.with_backbone else "SCFE E_Z",
    }
    if train.any() and test.any():
        details.update(probe_scores(x[train], y[train], x[test], y[test], config))
        details.update(
            {"protocol": "fixed split", "train_crops": int(train.sum()), "test_crops": int(test.sum())}
        )
    else:
        scores, folds, dropped = cross_validated_scores(x, y, config)
        details.update(scores)
        details.update({"protocol": f"{folds}-fold stratified CV", "crops": len(y)})
        if dropped:
            details["classes_left_out"] = [CELL_CLASSES[c] for c in dropped]
    result = TaskResult(Task.CLASSIFICATION, PROBE_METRIC, details["logreg_f1_weighted"], details)
    result.skipped, result.evaluated = extracted.skipped, len(y)
    result.artifacts["tsne"] = tsne_embedding(x, y, config)
    return result


__all__ = [
    "PROBE_METRIC",
    "Features",
    "ProbeConfig",
    "cross_validated_scores",
    "extract_features",
    "logistic_c",
    "probe_crops",
    "probe_scores",
    "run_probe",
    "tsne_embedding",
]
