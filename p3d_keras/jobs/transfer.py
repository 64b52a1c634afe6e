"""Transfer evaluation, the paper's protocol (Table 3, Fig. 7): a linear SVM on video features of
another data set, with the train/test split given by the feature files (`transfer`; the
`p3d-transfer` program calls it). Needs scikit-learn (the `p3d_keras[transfer]` extra, which
also brings matplotlib for the pictures).

    from p3d_keras.jobs.transfer import transfer

    report = transfer("ucf_train.npz", "ucf_test.npz", out="svm/", labels_file="classInd.txt")

Feature files, as `p3d-extract-features` writes them:
- shards mode: one `.npz` with `video_features [V, D]`, `video_labels [V]` (class indices) and
  `video_ids [V]`. Class names from `labels_file` (indices into it), else the indices.
- video mode: a folder of per-video `.npz` files (`jobs.feature_files.read_features`); a video's
  feature is the mean of its windows' `features/<layer>` rows. Its class is the `labels_csv`
  row of its media id (`media_id,label` rows; a `media_id,label` header line is skipped), else
  the name of the folder holding the video (the media id `class/video` of a `<root>/<class>/`
  layout gives `class`). Class names in `labels_file` order, else sorted.

Protocol: every video feature is L2-normalised (as the paper), a `sklearn.svm.LinearSVC`
(one-vs-rest, squared hinge loss, penalty `c`) is trained on the train features and scored on
the test features: accuracy, per-class accuracy and the confusion matrix (`report.json`,
`confusion_matrix.png`), and a t-SNE map of the normalised test (or all) features coloured by
class (`tsne.png`, the paper's Fig. 7).
"""
import csv
import dataclasses
import logging
import os
import pathlib
import warnings

import numpy as np

from p3d_keras.core.checks import check_choice, expect
from p3d_keras.core.files import read_npz
from p3d_keras.core.labels import read_label_file
from p3d_keras.core.output_folder import WORK_DIR
from p3d_keras.jobs import feature_files, metrics, reports

log = logging.getLogger(__name__)

TRANSFER_EXTRA = "p3d_keras[transfer]"  # the extra that brings scikit-learn
TSNE_PNG = "tsne.png"
TSNE_SETS = ("test", "all", "none")
_SHOWN = 10  # ids shown in an error


@dataclasses.dataclass
class FeatureSet:
    """Video features `[V, D]` float64 with their `video_ids [V]` and class `labels [V]` (names),
    read from `source`."""
    features: np.ndarray
    video_ids: np.ndarray
    labels: np.ndarray
    source: str


def load_sklearn():
    """The `sklearn` package with its `svm`, `manifold` and `exceptions` modules loaded; raises
    ImportError naming the extra when scikit-learn is not installed."""
    try:
        import sklearn.exceptions  # noqa: PLC0415 (the optional [transfer] extra)
        import sklearn.manifold  # noqa: PLC0415 (the optional [transfer] extra)
        import sklearn.svm  # noqa: PLC0415 (the optional [transfer] extra)
    except ImportError:
        raise ImportError(f"Expected scikit-learn (pip install '{TRANSFER_EXTRA}'). Received: it is not "
                          "installed") from None
    return sklearn


def _shard_features(path, class_names):
    data = read_npz(path)
    needed = ("video_features", "video_labels", "video_ids")
    expect(all(key in data for key in needed),
           f"p3d-extract-features' shard-mode file with {list(needed)}", file=str(path), keys=list(data))
    features, labels, ids = (data[key] for key in needed)
    labels = labels.astype("int64")
    if class_names is not None:
        bad = labels[(labels < 0) | (labels >= len(class_names))]
        expect(not len(bad), f"class indices below {len(class_names)} (the label file's classes)", file=str(path),
               labels=sorted(set(bad.tolist()))[:_SHOWN])
        names = np.array(class_names)[labels]
    else:
        names = labels.astype(str)
    return FeatureSet(features.astype("float64"), ids.astype(str), names, str(path))


def read_labels_csv(path):
    """`{media_id: label}` of a CSV file of `media_id,label` rows (a `media_id,label` header is skipped).
    Raises ValueError naming the file for a short row or a media id given twice."""
    result = {}
    with open(path, newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv.reader(f), 1):
            if not row or (number == 1 and [c.strip() for c in row[:2]] == ["media_id", "label"]):
                continue
            expect(len(row) >= 2 and row[0].strip() and row[1].strip(), "rows media_id,label",
                   file=str(path), line=number, row=row)
            media_id = row[0].strip()
            expect(media_id not in result, "each media id once", file=str(path), line=number, media_id=media_id)
            result[media_id] = row[1].strip()
    return result


def _pick_layer(layers, layer, file):
    if layer is not None:
        expect(layer in layers, f"a layer of the feature files, one of {sorted(layers)}", layer=layer, file=file)
        return layer
    if len(layers) == 1:
        return next(iter(layers))
    expect("pool5" in layers, "layer (the files hold several and no pool5)", layers=sorted(layers), file=file)
    return "pool5"


def _video_folder_features(folder, layer, labels):
    files = sorted(p for p in pathlib.Path(folder).rglob(f"*{feature_files.SUFFIX}")
                   if WORK_DIR not in p.relative_to(folder).parts)
    expect(bool(files), "a folder of per-video feature files (p3d-extract-features --videos --out)",
           folder=str(folder), files=0)
    rows, ids = [], []
    for file in files:
        video = feature_files.read_features(file)  # raises ValueError naming the file
        layer = _pick_layer(video["features"], layer, str(file))
        rows.append(video["features"][layer].astype("float64").mean(axis=0))
        ids.append(video["media_id"])
    dims = {len(row) for row in rows}
    expect(len(dims) == 1, f"one feature size for every video of {folder}", sizes=sorted(dims))
    if labels is not None:
        missing = [i for i in ids if i not in labels]
        expect(not missing, "a label for every video in the labels CSV", folder=str(folder),
               missing=len(missing), first_missing=missing[:_SHOWN])
        names = [labels[i] for i in ids]
    else:
        flat = [i for i in ids if "/" not in i]
        expect(not flat, "media ids class/video (videos in class folders) or a labels CSV", folder=str(folder),
               videos_without_folder=flat[:_SHOWN])
        names = [i.rsplit("/", 2)[-2] for i in ids]
    return FeatureSet(np.stack(rows), np.array(ids), np.array(names), str(folder))


def read_feature_set(path, *, layer=None, labels_csv=None, class_names=None):
    """The `FeatureSet` of a shard-mode `.npz` file or a video-mode folder (see the module
    docstring). `layer` (video mode): which `features/<layer>` (default: the only one, else
    pool5); `labels_csv`: a `read_labels_csv` dict (video mode); `class_names`: a label file's
    names (shard mode). Raises ValueError naming the file or folder for anything unexpected."""
    path = str(path)
    if os.path.isdir(path):
        return _video_folder_features(path, layer, labels_csv)
    expect(os.path.isfile(path) and path.endswith(".npz"),
           "a shard-mode .npz file or a video-mode folder of p3d-extract-features", path=path)
    return _shard_features(path, class_names)


def _natural(name):
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def class_list(train, test, class_names=None):
    """Class names in index order: `class_names` (a label file's), else the train set's sorted
    (numbers by value). Raises ValueError for fewer than two training classes, or a test class
    the SVM never saw (or, with `class_names`, one outside them)."""
    seen = sorted(set(train.labels.tolist()), key=_natural)
    expect(len(seen) >= 2, "training features of at least two classes", source=train.source, classes=seen)
    if class_names is not None:
        for part in (train, test):
            unknown = sorted(set(part.labels.tolist()) - set(class_names))
            expect(not unknown, "classes of the label file", source=part.source, unknown_classes=unknown[:_SHOWN])
    unseen = sorted(set(test.labels.tolist()) - set(seen), key=_natural)
    expect(not unseen, "test classes that the training features have", source=test.source,
           classes_without_training_videos=unseen[:_SHOWN])
    return list(class_names) if class_names is not None else seen


def l2_normalize(features):
    """Each row divided by its L2 norm (a zero row stays zero)."""
    features = np.asarray(features, dtype="float64")
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def train_svm(features, labels, *, c=1.0, max_iter=10000, seed=0):
    """A `sklearn.svm.LinearSVC(C=c)` fitted on the L2-normalised `features [V, D]` and integer
    `labels [V]`. A fit that does not converge in `max_iter` iterations is logged as a warning."""
    model = load_sklearn().svm.LinearSVC(C=c, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", load_sklearn().exceptions.ConvergenceWarning)
        model.fit(l2_normalize(features), labels)
    for warning in caught:
        log.warning("LinearSVC: %s", warning.message)
    return model


def tsne_embedding(features, *, seed=0):
    """2-D t-SNE (`sklearn.manifold.TSNE`, PCA initialisation) of the L2-normalised `features`;
    the perplexity is 30, or less for a few videos (it must stay below their number)."""
    perplexity = float(min(30.0, max(1.0, (len(features) - 1) / 3)))
    tsne = load_sklearn().manifold.TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(l2_normalize(features))


def transfer(train, test, *, out=None, c=1.0, layer=None, labels_csv=None, labels_file=None, tsne="test",
             max_iter=10000, seed=0):
    """Train a linear SVM on the video features `train` and score it on `test` (each a shard-mode
    `.npz` file or a video-mode folder, `read_feature_set`) and return the report: `accuracy`,
    `per_class_accuracy`, `confusion_matrix` (rows: true class), `classes`, the counts and
    settings. With `out`, writes `out/report.json`, `out/confusion_matrix.png` and, unless
    `tsne="none"`, `out/tsne.png` (t-SNE of the test or all features; the pictures need
    matplotlib; a single test video is not drawn, with a warning).

    c: the SVM's penalty (LinearSVC's C). labels_csv: a file of `media_id,label` rows (video
    mode). labels_file: class names in index order. Raises ValueError for unreadable or
    mismatched feature files (different feature sizes), videos without a label, one training
    class only, or test classes without training videos; ImportError without scikit-learn."""
    check_choice("tsne", tsne, TSNE_SETS)
    expect(c > 0, "a positive SVM penalty", c=c)
    load_sklearn()  # before reading: a missing extra first
    class_names = read_label_file(labels_file) if labels_file else None
    labels = read_labels_csv(labels_csv) if labels_csv else None
    train_set, test_set = (read_feature_set(p, layer=layer, labels_csv=labels, class_names=class_names)
                           for p in (train, test))
    expect(train_set.features.shape[1] == test_set.features.shape[1],
           "test features of the training features' size", train=f"{train_set.source}: "
           f"{train_set.features.shape[1]}", test=f"{test_set.source}: {test_set.features.shape[1]}")
    names = class_list(train_set, test_set, class_names)
    index = {name: i for i, name in enumerate(names)}
    train_y, test_y = (np.array([index[n] for n in s.labels]) for s in (train_set, test_set))
    model = train_svm(train_set.features, train_y, c=c, max_iter=max_iter, seed=seed)
    predicted = model.predict(l2_normalize(test_set.features))
    matrix = metrics.confusion_matrix(test_y, predicted, len(names))
    report = dict(accuracy=float(np.mean(predicted == test_y)), num_train=len(train_y), num_test=len(test_y),
                  feature_size=int(train_set.features.shape[1]), svm={"kind": "LinearSVC", "C": c},
                  train=train_set.source, test=test_set.source,
                  per_class_accuracy=metrics.per_class_accuracy(matrix, names), classes=names,
                  confusion_matrix=matrix.tolist())
    if out is not None:
        reports.write_report(out, report)
        if tsne != "none":
            shown = test_set if tsne == "test" else FeatureSet(
                np.concatenate([train_set.features, test_set.features]), None,
                np.concatenate([train_set.labels, test_set.labels]), "all")
            if len(shown.features) < 2:  # t-SNE places two points at least
                log.warning("%s not drawn: t-SNE needs two videos at least. Received: %d %s video",
                            os.path.join(out, TSNE_PNG), len(shown.features), tsne)
                return report
            points = tsne_embedding(shown.features, seed=seed)
            reports.save_embedding_png(points, [index[n] for n in shown.labels], names,
                                       os.path.join(out, TSNE_PNG),
                                       title=f"t-SNE of {len(points)} {tsne} video features "
                                             f"({os.path.basename(os.path.normpath(shown.source))})")
    return report
