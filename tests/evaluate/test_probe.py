"""The DinoBloom single-cell probe: classifiers on hand-made features, and the whole probe on a tiny model."""

import dataclasses

import numpy as np
import pytest
import torch

from support.testers import small_test_config
from unihema.data.schema import Task
from unihema.data.synthetic import SyntheticConfig, SyntheticCorpus
from unihema.data.transforms import TransformConfig
from unihema.evaluate.probe import (
    PROBE_METRIC,
    ProbeConfig,
    cross_validated_scores,
    extract_features,
    logistic_c,
    probe_crops,
    probe_scores,
    run_probe,
)
from unihema.model.unihema import UniHema

SMALL = dict(transforms=TransformConfig(cls_size=32), pad_to_multiple=1, batch_size=16)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return UniHema.from_config(small_test_config()).eval()


@pytest.fixture(scope="module")
def crops():
    corpus = SyntheticCorpus(SyntheticConfig(n_images=8, image_size=64, rbc_radius=5.0, crop_size=16))
    return corpus.samples(Task.CLASSIFICATION, None)


def _clusters(rng, per_class: int, classes: int = 3, dim: int = 8):
    centres = np.eye(classes, dim) * 10
    x = np.concatenate([centres[c] + rng.normal(0, 0.5, (per_class, dim)) for c in range(classes)])
    return x.astype(np.float32), np.repeat(np.arange(classes), per_class)


def test_c_follows_the_feature_dimension_as_dinobloom_does():
    assert logistic_c(feature_dim=384, num_classes=8) == pytest.approx(30.72)  # 100 / (M K) regularisation
    rng = np.random.default_rng(0)
    train_x, train_y = _clusters(rng, 10)
    test_x, test_y = _clusters(rng, 4)
    scores = probe_scores(train_x, train_y, test_x, test_y)
    assert scores["C"] == pytest.approx(8 * 3 / 100)
    for name in ("logreg", "knn1", "knn20"):
        assert scores[f"{name}_accuracy"] == 1.0 and scores[f"{name}_f1_weighted"] == 1.0
        assert scores[f"{name}_balanced_accuracy"] == 1.0 and scores[f"{name}_f1_macro"] == 1.0
    assert scores["knn1_k"] == 1 and scores["knn20_k"] == 20
    few = probe_scores(train_x[:5], train_y[:5], test_x, test_y)
    assert few["knn20_k"] == 5  # k cannot exceed the training set


def test_one_nearest_neighbour_by_hand():
    train_x = np.array([[0.0], [1.0], [10.0]])
    train_y = np.array([0, 0, 1])
    test_x, test_y = np.array([[0.4], [6.0], [9.0]]), np.array([0, 0, 1])
    scores = probe_scores(train_x, train_y, test_x, test_y, ProbeConfig(neighbours=(1,)))
    # 6.0 is nearer to 10 than to 1: two of three right; class 0 recall 1/2, class 1 recall 1.
    assert scores["knn1_accuracy"] == pytest.approx(2 / 3)
    assert scores["knn1_balanced_accuracy"] == pytest.approx(0.75)


def test_cross_validation_is_stratified_and_leaves_out_single_crop_classes():
    rng = np.random.default_rng(1)
    x, y = _clusters(rng, 6)
    x = np.concatenate([x, np.full((1, 8), 50.0, np.float32)])
    y = np.concatenate([y, [7]])
    scores, folds, dropped = cross_validated_scores(x, y, ProbeConfig(folds=5))
    assert folds == 5 and dropped == [7] and scores["logreg_accuracy"] == 1.0
    assert cross_validated_scores(x[:-1], y[:-1], ProbeConfig(folds=10))[1] == 6  # the smallest class
    with pytest.raises(ValueError, match="every class has 1"):
        cross_validated_scores(x[[0, 6]], y[[0, 6]])


def test_probe_config_is_validated():
    with pytest.raises(ValueError, match="ProbeConfig.folds"):
        ProbeConfig(folds=1)
    with pytest.raises(ValueError, match="ProbeConfig.neighbours"):
        ProbeConfig(neighbours=(0,))


def test_probe_on_a_tiny_model_uses_the_fixed_split_and_frozen_scfe_features(model, crops):
    config = ProbeConfig(**SMALL, tsne_points=30)
    chosen = probe_crops(crops, config)
    assert {s.split for s in chosen} == {"train", "test"}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    result = run_probe(model, crops, config, progress=seen.append)
    assert result.metric == PROBE_METRIC and result.value == result.details["logreg_f1_weighted"]
    details = result.details
    assert details["protocol"] == "fixed split" and sum(seen) == len(chosen) == result.evaluated
    assert details["train_crops"] == sum(s.split == "train" for s in crops)
    with torch.no_grad():
        scfe_dim = model(torch.zeros(1, 3, 32, 32), Task.CLASSIFICATION).features.shape[1]
    train_classes = len({s.cell_class for s in crops if s.split == "train"})
    assert details["feature_dim"] == scfe_dim and details["C"] == pytest.approx(
        scfe_dim * train_classes / 100
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # frozen
    tsne = result.artifacts["tsne"]
    assert tsne["points"].shape == (len(tsne["labels"]), 2) and len(tsne["labels"]) == 30


def test_probe_without_a_split_cross_validates_and_can_add_backbone_features(model, crops):
    unsplit = [dataclasses.replace(s, split=None) for s in crops[:24]]
    plain = extract_features(model, unsplit, ProbeConfig(**SMALL))
    assert plain.features.shape[0] == 24 and plain.splits == [None] * 24
    with_backbone = ProbeConfig(**SMALL, with_backbone=True, tsne_points=0)
    result = run_probe(model, unsplit, with_backbone)
    assert result.details["protocol"].endswith("-fold stratified CV") and result.details["crops"] == 24
    channels = model.backbone(torch.zeros(1, 3, 32, 32))[-1].shape[1]
    assert result.details["feature_dim"] == plain.features.shape[1] + channels
    assert result.details["features"] == "SCFE E_Z + pooled backbone" and result.artifacts["tsne"] == {}
