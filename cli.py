"""The `headstart` command line: parses arguments, calls one library function per command,
and turns the library's named errors into `Error: <message>` with exit code 1."""

from __future__ import annotations

import errno
import functools
import gc
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import click
from PIL import Image  # 15 ms: for its warning class

from .extractor.errors import HeadstartError
from .extractor.progress import progress_seconds
from .extractor.settings import (
    COLOR_MODES,
    DEFAULT_AUGMENT,
    DEFAULT_BACKBONE,
    DEFAULT_COLOR_MODE,
    DEFAULT_PRECISION,
    DEVICES,
    ENGINES,
    PRECISIONS,
    STORE_DTYPES,
    default_workers,
)
from .extractor.terminal import listed, one_line
from .extractor.warm_start import session_opened_early
from .heads.kinds import HEAD_KINDS
from .launch import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    Terminated,
    forget_termination,
    is_process,
    leave_without_library_exit_handlers,
    on_sigterm,
    terminate,
    was_terminated,
)

if TYPE_CHECKING:
    from .extractor.pipeline import EmbedSummary

# The libraries (numpy, pyarrow, ONNX Runtime, scikit-learn, Keras) are imported by
# the command that uses them, not here: `--help` answers at once, and embed opens its
# network's session while they load (extractor/warm_start.py).

EXIT_STRICT_FAILURES = 3
ERRORS_SHOWN = 20


# What an interrupted command keeps, said in one line
KEPT = {
    "embed": "the parts written so far are kept; the same command goes on from there",
    "train": "HEAD_DIR is unchanged; run the command again",
    "train-cnn": "the epochs completed so far are kept; the same command resumes after them",
    "predict": "the predictions file is written whole or not at all, and a report left "
    "half-made is removed; run the command again",
    "export": "no model was written; run the command again",
    "demo": "what it made so far is kept; the same command goes on from there",
}


class HeadstartGroup(click.Group):
    def invoke(self, ctx: click.Context):
        forget_termination()
        previous = on_sigterm(terminate)
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as interrupt:
            self._stopped(ctx, isinstance(interrupt, Terminated))
        except HeadstartError as error:
            if was_terminated():  # a library turned the Terminated into an error we name
                self._stopped(ctx, True)
            if is_process():
                # Objects the failure cut short may complain as they go; the Error line
                # says it all already.
                sys.unraisablehook = lambda unraisable: _ignored(unraisable.exc_value)
                sys.excepthook = lambda kind, value, traceback: _ignored(value)
                if getattr(error, "hdf5_cut_short", False):
                    leave_without_library_exit_handlers()
            _release(error)
            raise click.ClickException(one_line(str(error))) from None
        except Exception:
            if was_terminated():  # a library turned the Terminated into an error of its own
                self._stopped(ctx, True)
            raise
        finally:
            on_sigterm(previous)

    @staticmethod
    def _stopped(ctx: click.Context, terminated: bool):
        kept = KEPT.get(ctx.invoked_subcommand or "", "run the command again")
        say(f"{'terminated' if terminated else 'interrupted'}: {kept}", err=True)
        ctx.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


def _release(error: BaseException) -> None:
    """Free what the failed work still holds through the error's tracebacks, now rather
    than while Python shuts down (see _ignored)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        error = error.__context__ or error.__cause__
    gc.collect()


def _ignored(error: BaseException | None) -> None:
    logging.getLogger("headstart").debug("after the error, ignored: %r", error)
    if "decrement id ref count" in str(error):
        leave_without_library_exit_handlers()


@click.group(cls=HeadstartGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="headstart")
def main() -> None:
    """headstart: embed image folders once with a frozen ImageNet backbone (InceptionV3 by
    default; `headstart backbones` lists the others) into Parquet, then train small heads
    on the features in seconds.

    \b
    Quick start:
      headstart demo                       # sample images -> features, offline too
      headstart embed photos/ -o features/ # one row per image, 2048 InceptionV3 features

    \b
    Progress of long work: a bar on a terminal; in a batch job's log, a line every
    30 s (HEADSTART_PROGRESS_SECONDS sets the interval).
    """
    _show_library_messages()


def shows_progress(command):
    """A command with long passes: a nonsense HEADSTART_PROGRESS_SECONDS is an error before
    its work, not after an hour of it (and not for --help, nor for the other commands)."""

    @functools.wraps(command)
    def checked(*args, **kwargs):
        progress_seconds()
        return command(*args, **kwargs)

    return checked


def given_backbone_option(opening: str):
    """predict's and export's --backbone, its help opening with `opening`."""
    return click.option(
        "--backbone",
        "given_backbone",
        default=None,
        metavar="MODEL_DIR|FILE.onnx",
        help=f"{opening} network the head's features were made with, when this machine's "
        "cache lacks it: a train-cnn MODEL_DIR (for embed --backbone features) or the "
        "backbone's ONNX file from the cache where they were made (checked by sha256, then "
        "cached here).",
    )


def recorded_weights_option(opening: str):
    """predict's and export's --weights, its help opening with `opening`."""
    return click.option(
        "--weights",
        default=None,
        metavar="PATH",
        help=f"{opening} Keras weights file the head's features were made with, needed only "
        "when its ONNX export is not in the cache.",
    )


def network_weights_option(help: str, default: str | None = "imagenet"):
    """--weights of the commands that build a Keras network: imagenet, random or a file.
    embed's default is None, said as imagenet: given with a backbone that brings its own
    weights, it is refused rather than ignored."""
    return click.option(
        "--weights", default=default, show_default=default is not None,
        metavar="imagenet|random|PATH", help=help,
    )  # fmt: skip


def seed_option(of_what: str):
    return click.option(
        "--seed", default=0, show_default=True, help=f"Seed of {of_what} (0 to 2**32-1)."
    )


val_split_option = click.option(
    "--val-split",
    default=0.2,
    show_default=True,
    help="Share of each class held out for validation (stratified), in (0, 1).",
)


def keras_training_options(prefix: str, epochs: str, patience: int, batch_size: str):
    """--epochs, --patience, --lr and --batch-size of a Keras training (train --head mlp,
    train-cnn); each help opens with `prefix`."""
    options = [
        click.option("--epochs", default=100, show_default=True, help=prefix + epochs),
        click.option(
            "--patience",
            default=patience,
            show_default=True,
            help=f"{prefix}{'e' if prefix else 'E'}pochs without val_loss gain before stopping "
            "(at least 0).",
        ),
        click.option(
            "--lr", default=1e-3, show_default=True, help=f"{prefix}Adam learning rate, in (0, 1]."
        ),
        click.option("--batch-size", default=32, show_default=True, help=prefix + batch_size),
    ]

    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command

    return apply


def _say_skipped(skipped: list[tuple[str, str]]) -> None:
    """The first ERRORS_SHOWN (path, reason) of the files a command skipped, on stderr."""
    for path, reason in skipped[:ERRORS_SHOWN]:
        say(f"skipped {path}: {reason}", err=True)
    if len(skipped) > ERRORS_SHOWN:
        say(f"... and {len(skipped) - ERRORS_SHOWN} more", err=True)


def say(line: str = "", err: bool = False) -> None:
    """One line on the terminal; the names in it are shown as data (extractor.terminal)."""
    echo(one_line(line), err=err)


def echo(text: str, err: bool = False) -> None:
    """click.echo, with standard output on a full disk (`> /dev/full`) one `Error:` line,
    not a traceback (a closed pipe is click's to handle: the reader has gone)."""
    try:
        click.echo(text, err=err)
    except OSError as error:
        if error.errno == errno.EPIPE or err:
            raise
        from .extractor.errors import OutputError

        raise OutputError(f"cannot write to standard output: {error.strerror}") from None


class _EchoHandler(logging.Handler):
    """Library log lines (export started, device used) on the current stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        say(self.format(record), err=True)


def _show_library_messages() -> None:
    logger = logging.getLogger("headstart")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler())
        logger.setLevel(logging.INFO)
    # its INFO lines are noise here, and so are its warnings: an optimisation pass it could
    # not apply (with a traceback) leaves a correct, if less tidy, graph
    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    # A library's warning is one line of ours, not a file:line report with a source line;
    # Pillow's decompression-bomb warning is replaced by the decoder's own, naming the file.
    warnings.showwarning = _one_line_warning
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    logging.getLogger("headstart").warning("warning: %s", message)


weights_help = (
    "imagenet (Keras' weights, downloaded once into its cache), random (seeded by --seed; "
    "offline smoke runs and tests) or the PATH of a Keras weights file for the backbone (no top)."
)


@main.command()
@click.argument("images_dir", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Feature store folder (created; re-runs add only new or changed images).",
)
@network_weights_option(weights_help + " [default: imagenet]", default=None)
@seed_option("--weights random")
@click.option(
    "--backbone",
    default=DEFAULT_BACKBONE,
    show_default=True,
    metavar="NAME|FILE.onnx|MODEL_DIR",
    help="The network: a Keras ImageNet application by name (`headstart backbones` lists "
    "them: resnet50, convnext_tiny, efficientnet_v2_s, ...); an ONNX file taking NHWC RGB "
    "pixels in [0, 255] and giving (N, D) features; or a model from train-cnn (its "
    "penultimate layer, at its image size and colour mode). --weights applies to names only.",
)
@click.option(
    "--backbone-output",
    default=None,
    metavar="NAME",
    help="The output holding the features, for an ONNX file with several.",
)
@click.option(
    "--image-size",
    type=int,
    default=None,
    help="Images are resized to this square size, up to 2048 [default: the backbone's own: "
    "299 for inception_v3; at least its smallest, 75 for inception_v3].",
)
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Images per model call, at least 1 [default: 16 on CPU, 64 on a GPU, at 299 px; "
    "as many pixels at other sizes, e.g. 4 on CPU at 600 px, so that memory stays near "
    "299 px's].",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help=f"Decode threads, 1 to 256 [default: one per core, here {default_workers()}].",
)
@click.option(
    "--device",
    type=click.Choice(DEVICES),
    default="auto",
    show_default=True,
    help="auto: TensorRT or CUDA where a GPU is usable, else CPU. GPUs need the CUDA "
    "and cuDNN libraries onnxruntime-gpu is built for: pip install 'headstart[gpu]'.",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=DEFAULT_PRECISION,
    show_default=True,
    help="fp16: half-precision copy of the network, GPUs only; int8: quantized copy for "
    "CPUs (about 2x faster, feature cosine ~0.9999). Made once, cached; recorded in the "
    "store's fingerprint.",
)
@click.option(
    "--store-dtype",
    type=click.Choice(STORE_DTYPES),
    default=None,
    help="How OUT_DIR keeps the features: float16 halves the store on disk (cosine to "
    "float32 > 0.9999; train and predict read float32 back). Not the network's arithmetic "
    "(that is --precision). A store keeps one: [default: the store's, float32 for a new one]",
)
@click.option(
    "--fast-decode",
    is_flag=True,
    help="Decode JPEGs at least twice the image size at reduced scale (libjpeg draft): "
    "much less decoding work, slightly different pixels (recorded in the fingerprint).",
)
@click.option(
    "--views",
    default=0,
    show_default=True,
    help="Also store K (0 to 64) augmented views of each image (column `view`: 0 plain, "
    "1..K), made from its decoded pixels and seeded by --seed; train uses them, predict "
    "--tta too.",
)
@click.option(
    "--augment",
    default=DEFAULT_AUGMENT,
    show_default=True,
    help="What the views vary: flip, crop, rotate, color (comma-separated).",
)
@click.option(
    "--follow-links",
    is_flag=True,
    help="Follow symbolic links to folders and to files outside IMAGES_DIR (without it they "
    "are listed as skipped); link loops are detected.",
)
@click.option(
    "--repair",
    is_flag=True,
    help="Move unreadable parts aside (as _corrupt-*) and embed their images again.",
)
@click.option(
    "--rehash",
    is_flag=True,
    help="Read and hash every file, even those whose size and times are as OUT_DIR recorded "
    "them (a re-run reads only new or changed files; this checks the others too, e.g. where "
    "file times cannot be trusted: a clock set back, a network file system's cache).",
)
@click.option(
    "--images-moved",
    is_flag=True,
    help="IMAGES_DIR is the folder OUT_DIR was made from, moved or mounted at another path: "
    "record its new path (changed files are embedded again as usual). Without it, another "
    "folder is refused unless its files match the stored ones.",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="local",
    show_default=True,
    help="ray: decode and embed on a Ray cluster (pip install 'headstart[ray]'); the store "
    "is written the same way.",
)
@click.option(
    "--ray-address",
    default=None,
    metavar="ADDR",
    help="Ray cluster to join (e.g. ray://head:10001 or auto) [default: $RAY_ADDRESS, "
    "else a local Ray].",
)
@click.option(
    "--shard",
    default=None,
    metavar="K/N",
    help="Embed only shard K of N (0 <= K < N), by a stable hash of each path: N jobs of an "
    "array (e.g. --shard $SLURM_ARRAY_TASK_ID/8) fill one store together.",
)
@click.option(
    "--rows-per-part",
    default=1000,
    show_default=True,
    help="Rows per Parquet part (at least 1); a killed run loses at most this much work.",
)
@click.option(
    "--strict",
    is_flag=True,
    help=f"Exit with code {EXIT_STRICT_FAILURES} if any image could not be embedded.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace a store that was made with a different extractor or from another IMAGES_DIR.",
)
@shows_progress
def embed(
    images_dir,
    out_dir,
    weights,
    seed,
    backbone,
    backbone_output,
    image_size,
    batch_size,
    workers,
    device,
    precision,
    store_dtype,
    fast_decode,
    views,
    augment,
    follow_links,
    repair,
    rehash,
    images_moved,
    engine,
    ray_address,
    shard,
    rows_per_part,
    strict,
    overwrite,
) -> None:
    """Embed every image under IMAGES_DIR into the Parquet feature store OUT_DIR.

    Labels are the first-level subfolder names (images directly in IMAGES_DIR have none).
    Re-runs embed only new or changed files and drop rows of deleted ones; a file whose
    size and times are as when it was last read is not read again (see --rehash). Unreadable
    images are listed in OUT_DIR/_errors.csv and the run goes on. OUT_DIR remembers its
    IMAGES_DIR: another folder is refused (see --overwrite, --images-moved). Ends with the
    line `embedded N, skipped M, already present K` (and `, not images X` when files that
    are not images were found; hidden files are skipped without a count).

    \b
    Example:
      headstart embed photos/ -o features/
      headstart embed photos/ -o features/ --weights random --image-size 139
      headstart embed photos/ -o convnext-features/ --backbone convnext_tiny
      headstart embed photos/ -o dino-features/ --backbone dinov2.onnx --image-size 224
      headstart embed photos/ -o cnn-features/ --backbone cnn/
    """
    network = dict(weights=weights, seed=seed, backbone=backbone, precision=precision)
    with session_opened_early(**network, device=device, engine=engine):
        from .extractor import embed as embed_images  # the libraries load meanwhile

        summary = embed_images(
            images_dir,
            out_dir,
            **network,
            backbone_output=backbone_output,
            image_size=image_size,
            batch_size=batch_size,
            workers=workers,
            device=device,
            fast_decode=fast_decode,
            shard=shard,
            engine=engine,
            ray_address=ray_address,
            follow_links=follow_links,
            repair=repair,
            rehash=rehash,
            images_moved=images_moved,
            views=views,
            augment=augment,
            overwrite=overwrite,
            rows_per_part=rows_per_part,
            store_dtype=store_dtype,
            progress=True,
        )
    _report(summary, out_dir)
    if strict and summary.skipped:
        sys.exit(EXIT_STRICT_FAILURES)


def _report(summary: EmbedSummary, out_dir: Path) -> None:
    from .extractor.store import ERRORS_FILE

    _say_skipped(summary.errors)
    if summary.skipped:
        say(f"every skipped file and its reason: {out_dir / ERRORS_FILE}", err=True)
    if summary.removed:
        say(f"removed {summary.removed} rows of deleted or changed files")
    if summary.copies_removed:
        say(f"removed {summary.copies_removed} second copies of rows (left by a run killed "
            "while it compacted the store, or by shards of two splits)")  # fmt: skip
    if summary.kept:
        say(
            f"kept the stored rows of {summary.kept} files that are there but could not be "
            "read this time (listed above); a later run that can read them checks them again"
        )
    if summary.not_read:
        say(
            f"not read again: {summary.not_read} files whose size and times are as when they "
            "were last read (--rehash reads every file)"
        )
    say(summary.line())


@main.command()
@click.argument("features_dir", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    "head_dir",
    required=True,
    metavar="HEAD_DIR",
    type=click.Path(path_type=Path),
    help="Folder for the trained head (replaced).",
)
@click.option(
    "--head",
    "kind",
    type=click.Choice((*HEAD_KINDS, "auto")),
    default="logreg",
    show_default=True,
    help="logreg, svm, knn, rf (scikit-learn), mlp (Keras: the tensorflow extra), or auto: "
    "train each and keep the best cross-validated one.",
)
@click.option(
    "--val-split",
    default=0.2,
    show_default=True,
    help="Share of each class held out for validation (stratified), in [0, 1). 0: a final "
    "head on every image, scored by cross-validation only.",
)
@seed_option("the split, the folds and the head")
@click.option(
    "--C", "C", type=float, help="logreg, svm: inverse regularization, from 1e-6 to 1e6 "
    "[default: chosen by cross-validation: logreg 0.001 to 100, svm 0.1 to 100]."
)  # fmt: skip
@click.option(
    "--gamma", type=float, help="svm: RBF kernel width, from 1e-9 to 1000 [default: chosen "
    "by cross-validation, 0.1 to 3 times 1/(informative dimensions)]."
)  # fmt: skip
@click.option(
    "--k", "neighbors", type=int, help="knn: neighbours (at least 1) [default: chosen by "
    "cross-validation from 1 to 21]."
)  # fmt: skip
@click.option(
    "--max-depth", type=int, help="rf: deepest tree, from 1 to 10000 [default: chosen by "
    "cross-validation: 8 or unlimited]."
)  # fmt: skip
@click.option(
    "--min-samples-leaf", type=int, help="rf: fewest images per leaf (at least 1) [default: "
    "chosen by cross-validation: 1 or 5]."
)  # fmt: skip
@click.option(
    "--cv-folds", default=5, show_default=True, help="Folds of the cross-validation (at "
    "least 2; fewer when a class has fewer training images)."
)  # fmt: skip
@click.option(
    "--class-weight", type=click.Choice(["none", "balanced"]), default="none",
    show_default=True, help="balanced: weigh each class by the inverse of its share, for "
    "imbalanced classes (logreg, svm, rf, mlp); scores become balanced accuracy."
)  # fmt: skip
@keras_training_options("mlp: ", "most epochs (at least 1).", 5, "batch size (at least 1).")
@click.option("--hidden", default=256, show_default=True, help="mlp: hidden units (at least 1).")
@click.option("--dropout", default=0.5, show_default=True, help="mlp: dropout rate, in [0, 1).")
@click.option(
    "--views-in-training",
    type=click.Choice(["all", "none"]),
    default="all",
    show_default=True,
    help="With a store made with --views: train on every view of the training images, or on "
    "their plain views only (validation always uses plain views of held-out images).",
)
@click.option("--tensorboard", is_flag=True, help="mlp: write TensorBoard logs to HEAD_DIR/logs.")
@click.option(
    "--memory-budget", default="1GiB", show_default=True, metavar="SIZE",
    help="Memory for the features beyond what the process starts with (e.g. 512MB, 4GiB). "
    "A store that does not fit is streamed from disk: logreg (by mini-batch gradient "
    "descent) and mlp learn from every row; knn, rf and svm from a stratified subsample "
    "that fits, and say so.",
)  # fmt: skip
@shows_progress
def train(
    features_dir,
    head_dir,
    kind,
    val_split,
    seed,
    C,
    gamma,
    neighbors,
    max_depth,
    min_samples_leaf,
    cv_folds,
    class_weight,
    views_in_training,
    memory_budget,
    **mlp_options,
) -> None:
    """Train a classifier head on the features in FEATURES_DIR (from `headstart embed`).

    Holds out a stratified validation split, chooses the head's hyperparameters by
    cross-validation on the training images (unless given), prints the choice and the
    validation accuracy, and writes HEAD_DIR: model.onnx (the head), head.json (classes,
    hyperparameters and their cross-validation, the extractor fingerprint) and report/
    (index.html, a page to open in a browser, with the misclassified images; metrics.json,
    confusion_matrix.png; for mlp history.csv and curves.png). The rf head
    grows trees until validation log-loss stops improving (out-of-bag with --val-split 0).

    \b
    Example:
      headstart train features/ -o head/ --head logreg
      headstart train features/ -o head/ --head auto
      headstart train features/ -o head/ --head svm --C 10 --class-weight balanced
      headstart train features/ -o final/ --head mlp --val-split 0
    """
    from .heads.memory import parse_memory_budget
    from .heads.train import train_head

    _refuse_mlp_options_for_other_heads(click.get_current_context(), kind)
    given = {"C": C, "gamma": gamma, "neighbors": neighbors, "max_depth": max_depth,
             "min_samples_leaf": min_samples_leaf}  # fmt: skip
    result = train_head(
        features_dir,
        head_dir,
        kind,
        val_split=val_split,
        seed=seed,
        views_in_training=views_in_training,
        given=given,
        class_weight=class_weight,
        cv_folds=cv_folds,
        memory_budget=parse_memory_budget(memory_budget),
        **mlp_options,
    )
    _report_training(result)


MLP_OPTIONS = ("epochs", "patience", "lr", "batch_size", "hidden", "dropout", "tensorboard")


def _refuse_mlp_options_for_other_heads(ctx: click.Context, kind: str) -> None:
    """`--head logreg --epochs 50`: refused as a given --C is for knn, not dropped (the
    options have defaults: only those given on the command line count)."""
    from click.core import ParameterSource

    from .heads.errors import SettingError

    if kind in ("mlp", "auto"):
        return
    given = [
        "--" + name.replace("_", "-")
        for name in MLP_OPTIONS
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    ]
    if given:
        are = "is" if len(given) == 1 else "are"
        raise SettingError(f"{', '.join(given)} {are} for --head mlp (or auto), not {kind}")


def _report_training(result) -> None:
    from .heads.report import recall_line

    if result.candidates:
        _say_candidates(result.candidates, result.cv_scoring, result.kind)
    stopped = f", {result.epochs_run} epochs" if result.epochs_run else ""
    if result.train_rows_used and result.train_rows_used < result.train_rows:
        stopped += (f", learned from a subsample of {result.train_rows_used:,} of the "
                    f"{result.train_rows:,} training rows")  # fmt: skip
    images = f"{result.train_images} training / {result.val_images} validation images{stopped}"
    if result.accuracy is not None:
        say(f"validation accuracy {result.accuracy:.3f} ({result.kind} head, {images})")
    else:
        say(
            f"no held-out images (--val-split 0): the {result.kind} head trained on "
            f"{result.train_images} images{stopped}; cross-validated "
            f"{result.cv_scoring.replace('_', ' ')} {result.cv_score:.3f} (the folds also chose "
            "its hyperparameters: a little optimistic)"
        )
    if result.metrics and result.metrics.get("imbalanced"):
        say(recall_line(result.metrics))
    say(f"head: {result.head_dir}/model.onnx; report: {result.report_dir}/index.html")


def _say_candidates(rows: list[dict], scoring: str | None, kept: str) -> None:
    """--head auto's table: each kind, its hyperparameters, scores and time."""
    cv = f"cv {(scoring or 'accuracy').replace('_', ' ')}"
    width = len(cv)
    say(f"{'head':<7} {cv:>{width}} {'validation':>10} {'seconds':>8}  hyperparameters")
    for row in rows:
        chosen = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                           for k, v in row["hyperparameters"].items())  # fmt: skip
        score = "-" if row["cv_score"] is None else f"{row['cv_score']:.3f}"
        val = "-" if row["val_accuracy"] is None else f"{row['val_accuracy']:.3f}"
        mark = "  <- kept" if row["kind"] == kept else ""
        seconds = f"{row['seconds']:.1f}"
        say(f"{row['kind']:<7} {score:>{width}} {val:>10} {seconds:>8}  {chosen or '-'}{mark}")


def _layer_sizes(ctx, param, value: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: give sizes separated by commas, e.g. 256,128"
        ) from None


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
def report(path) -> None:
    """Build the report page of PATH again: a head folder, a train-cnn model folder, a
    prediction output (OUT.csv or OUT.parquet, whose report is OUT_report/) or a report
    folder.

    The page, index.html in the report folder, opens in any browser without a network:
    metrics per class, the confusion matrix, training curves, what was trained on what,
    and thumbnails of the misclassified images (read from the images folder the report
    records; the page says so when it is gone). train, train-cnn and predict with
    labelled images write it; run this after moving the images back, or on a report
    written before the page existed.

    \b
    Example:
      headstart report head/
      headstart report predictions.csv
    """
    from .heads.report_page import rebuild_report

    say(f"report page: {rebuild_report(path)}")


@main.command("train-cnn")
@click.argument("images_dir", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    "model_dir",
    required=True,
    metavar="MODEL_DIR",
    type=click.Path(path_type=Path),
    help="Folder for the trained model (replaced when training ends).",
)
@click.option(
    "--arch",
    metavar="NAME",
    default="simple",
    show_default=True,
    help="simple: a ConvNet from scratch. Or any backbone embed takes (inception, resnet50, "
    "efficientnet_b0, ...: `headstart backbones` lists them): frozen under a new head, then "
    "fine-tuned with --fine-tune-layers.",
)
@click.option(
    "--image-size",
    type=int,
    default=None,
    help="Square input size, up to 2048 [default: 128 for simple; a backbone's own, e.g. 299 "
    "for inception, which needs at least 75].",
)
@click.option(
    "--color-mode",
    type=click.Choice(COLOR_MODES),
    default=DEFAULT_COLOR_MODE,
    show_default=True,
    help="grayscale: one channel (simple only).",
)
@keras_training_options("", "Most epochs per phase (at least 1).", 10, "At least 1.")
@val_split_option
@seed_option("the split, init and augmentation")
@click.option(
    "--augment",
    default="auto",
    show_default=True,
    metavar="auto|full|geometric|light|none",
    help="Random changes to training images. light: small zooms and shifts; geometric: and "
    "flips; full: and rotations, contrast, brightness. auto: light for grayscale images and "
    "colour ones up to 96 px, full above (logged, recorded in model.json).",
)
@click.option("--no-augment", is_flag=True, hidden=True, help="Same as --augment none.")
@click.option(
    "--blocks",
    default=3,
    show_default=True,
    help="simple: conv blocks (at least 1), each ending in 2x2 max-pooling.",
)
@click.option(
    "--filters",
    default=32,
    show_default=True,
    help="simple: filters of block 1 (at least 1), doubled each block.",
)
@click.option(
    "--convs-per-block",
    default=1,
    show_default=True,
    help="simple: 3x3 conv+relu layers per block (at least 1).",
)
@click.option(
    "--dense",
    default="128",
    show_default=True,
    callback=_layer_sizes,
    help="simple: hidden dense layer sizes (each at least 1), comma-separated ('' for none).",
)
@click.option(
    "--dropout",
    type=float,
    default=None,
    help="Dropout after each hidden dense layer, in [0, 1) [default: 0.5; a backbone's head 0.2].",
)
@click.option(
    "--batchnorm/--no-batchnorm",
    default=True,
    show_default=True,
    help="simple: BatchNormalization after each conv (--no-batchnorm: the course's plain "
    "conv + relu).",
)
@click.option("--l2", default=0.0, show_default=True, help="simple: L2 weight penalty, in [0, 1].")
@network_weights_option("A backbone's: as in embed.")
@click.option(
    "--fine-tune-layers",
    default=0,
    show_default=True,
    help="Backbones: once the head has converged, unfreeze this many (at least 0) of the top "
    "layers that hold weights (BatchNorm stays frozen) and train on.",
)
@click.option(
    "--fine-tune-lr",
    default=1e-5,
    show_default=True,
    help="Backbones: fine-tuning learning rate, in (0, 1].",
)
@click.option(
    "--tensorboard",
    is_flag=True,
    help="Write TensorBoard logs (with histograms) to MODEL_DIR/logs.",
)
@click.option("--workers", type=int, default=None, help="Decode threads (1 to 256), as in embed.")
@shows_progress
def train_cnn(images_dir, model_dir, workers, **options) -> None:
    """Train a full CNN on the class folders of IMAGES_DIR.

    Images are read with embed's rules (unreadable ones are skipped and listed in
    MODEL_DIR/report/errors.csv), decoded once, split (stratified) and fed through tf.data
    with augmentation. Training uses EarlyStopping (best weights kept), ModelCheckpoint,
    ReduceLROnPlateau, CSVLogger, TerminateOnNaN and BackupAndRestore: if a run is killed,
    the same command resumes it after its last completed epoch. MODEL_DIR gets model.keras,
    model.onnx (float32 pixels in [0, 255] -> probabilities), model.json and report/.
    `headstart predict`, `export` and `info` accept MODEL_DIR. Needs TensorFlow (pip
    install -e '.[tensorflow]').

    \b
    Example:
      headstart train-cnn photos/ -o cnn/ --arch simple --blocks 3 --filters 32
      headstart train-cnn digits/ -o cnn/ --color-mode grayscale --image-size 28
      headstart train-cnn photos/ -o cnn/ --arch inception --fine-tune-layers 30
      headstart train-cnn photos/ -o cnn/ --arch efficientnet_b0 --fine-tune-layers 20
    """
    from .heads.cnn.settings import CnnSettings
    from .heads.cnn.training import train_cnn as train

    if options.pop("no_augment"):  # the older spelling of --augment none
        if options["augment"] not in ("auto", "none"):
            raise click.ClickException(f"--no-augment contradicts --augment {options['augment']}")
        options["augment"] = "none"
    result = train(images_dir, model_dir, CnnSettings.from_options(**options), workers, True)
    _say_skipped(result.skipped)
    say(
        f"validation accuracy {result.accuracy:.3f} ({options['arch']} CNN, {result.params:,} "
        f"parameters, {result.train_images} training / {result.val_images} validation images, "
        f"{result.epochs_run} epochs)"
    )
    say(f"model: {result.model_dir}/model.onnx; report: {result.model_dir}/report/index.html")


@main.command()
@click.argument("head_dir", type=click.Path(path_type=Path))
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    "out_path",
    required=True,
    metavar="OUT.csv|OUT.parquet",
    type=click.Path(path_type=Path),
    help="Predictions file; the format follows the suffix.",
)
@click.option(
    "--top-k",
    default=1,
    show_default=True,
    help="Classes per image (1 to the head's class count), most probable first "
    "(prediction_2, probability_2, ...).",
)
@recorded_weights_option("Images input only: the")
@given_backbone_option("Images input only: the")
@click.option(
    "--device",
    type=click.Choice(DEVICES),
    default="auto",
    show_default=True,
    help="Images input only: where the backbone runs, as in embed.",
)
@click.option(
    "--batch-size", type=int, default=None, help="Images input only: as in embed (at least 1)."
)
@click.option(
    "--workers", type=int, default=None, help="Images input only: as in embed (1 to 256)."
)
@click.option(
    "--tta",
    is_flag=True,
    help="Test-time augmentation: average the probabilities over each image's views (the "
    "stored ones, or made with the head's --views recipe from images).",
)
@click.option(
    "--memory-budget", default="1GiB", show_default=True, metavar="SIZE",
    help="Features input only: memory for the features beyond what the process starts with, "
    "as in train; the store is read a window of parts at a time within it.",
)  # fmt: skip
@shows_progress
def predict(
    head_dir, input_path, out_path, top_k, weights, given_backbone, device, batch_size, workers,
    tta, memory_budget,
) -> None:  # fmt: skip
    """Classify the images in INPUT with the head in HEAD_DIR (or a train-cnn MODEL_DIR).

    INPUT is an images folder, embedded on the fly with the head's extractor (same
    weights and image size; nothing is written next to the images), or a features folder
    from `headstart embed` made with that same extractor. A MODEL_DIR takes images only.
    One row per readable image, in path order: path, label (if INPUT has class folders),
    prediction, probability.
    With labels, accuracy is printed and a report is written to OUT_report/; unreadable
    images are listed in OUT_errors.csv.

    \b
    Example:
      headstart predict head/ new-photos/ -o predictions.csv
      headstart predict head/ features/ -o predictions.parquet --top-k 3
    """
    from .heads.memory import parse_memory_budget
    from .heads.predict import predict as predict_images

    summary = predict_images(
        head_dir,
        input_path,
        out_path,
        top_k=top_k,
        weights=weights,
        backbone=given_backbone,
        device=device,
        batch_size=batch_size,
        workers=workers,
        progress=True,
        tta=tta,
        memory_budget=parse_memory_budget(memory_budget),
    )
    _report_predictions(summary)


def _report_predictions(summary) -> None:
    _say_skipped(summary.errors)
    if summary.errors_path:
        say(f"every skipped file and its reason: {summary.errors_path}", err=True)
    source = {"images": f"images, run on {summary.device}", "features": "stored features"}
    say(
        f"predicted {summary.rows} images (from {source[summary.source]}) in "
        f"{summary.seconds:.1f} s, skipped {len(summary.errors)}: {summary.out}"
    )
    if summary.accuracy is not None:
        say(
            f"accuracy {summary.accuracy:.3f} on {summary.labelled} labelled images; "
            f"report: {summary.report_dir}/index.html"
        )
        if summary.metrics.get("imbalanced"):
            from .heads.report import recall_line

            say(recall_line(summary.metrics))
    if summary.unknown_labels:
        say(
            "labels the head was not trained on (counted as wrong): "
            + listed(summary.unknown_labels),
            err=True,
        )


@main.command()
@click.argument("head_dir", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--out",
    "out_path",
    required=True,
    metavar="MODEL.onnx",
    type=click.Path(path_type=Path),
    help="The ONNX file to write (replaced if it exists; not inside a head or model folder).",
)
@recorded_weights_option("The")
@given_backbone_option("The")
def export(head_dir, out_path, weights, given_backbone) -> None:
    """Fuse the head in HEAD_DIR with its backbone into one ONNX model (or write a
    train-cnn MODEL_DIR's network, described the same way).

    The model takes float32 NHWC RGB pixels in [0, 255] at the head's image size (input
    `pixels`, shape N x S x S x 3, 1 channel for grayscale CNNs; resize bilinearly) and
    returns class probabilities
    (output `probabilities`, N x classes). Preprocessing is inside the graph, so any ONNX
    runtime serves it without headstart; its outputs equal `headstart predict`'s. The class
    names, image size and extractor fingerprint are in the model's metadata.

    \b
    Example:
      headstart export head/ -o model.onnx
    """
    from .heads.export import export_model

    result = export_model(head_dir, out_path, weights=weights, backbone=given_backbone)
    size = result.image_size
    say(
        f"exported {result.path} ({result.size_bytes / 1e6:.0f} MB): float32 pixels "
        f"(N, {size}, {size}, {result.channels}) in [0, 255] -> probabilities of "
        f"{len(result.classes)} classes "
        f"({', '.join(result.classes[:5])}{', ...' if len(result.classes) > 5 else ''}); "
        f"weights: {result.weights}"
    )


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
@click.option(
    "--verify",
    is_flag=True,
    help="Read every row of a store and check it (columns, paths, finite features); run a "
    "head's or train-cnn model's network once, in a memory-bounded probe. Without it info "
    "reads metadata and labels only.",
)
def info(path, as_json, verify) -> None:
    """Say what PATH holds: a feature store (rows, classes, extractor, last run), a head
    folder (kind, classes, extractor, training, metrics), a train-cnn model folder (layers
    with their parameter counts, settings, metrics) or an exported .onnx model (inputs,
    outputs, classes, image size).

    \b
    Example:
      headstart info features/
      headstart info head/ --json
      headstart info features/ --verify
    """
    from .heads.info import describe

    description = describe(path, verify=verify)
    if as_json:
        echo(json.dumps(description, indent=2, default=str))  # JSON escapes controls
    else:
        _print_fields(description)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
def backbones(as_json) -> None:
    """List the networks embed --backbone takes by name: the Keras ImageNet applications,
    with their feature dimension, default (and smallest) image size, parameters without
    the classifier, ImageNet top-1 accuracy from their documentation, the memory and time
    their one-time export to ONNX took when measured (2 cores), and whether this machine's
    cache already holds an export (its weights named). A network headstart cannot export
    faithfully is listed as unsupported, with the reason, and refused.

    \b
    Example:
      headstart backbones
      headstart embed photos/ -o features/ --backbone efficientnet_v2_s
    """
    from .extractor.applications import EXPORT_MACHINE_GB
    from .extractor.catalogue import catalogue

    rows = catalogue()
    if as_json:
        echo(json.dumps(rows, indent=2))
        return
    say(
        f"{'backbone':<22}{'dim':>6}{'size':>6}{'min':>5}{'params':>9}{'top-1':>7}"
        f"{'export':>8}{'':>6}  cached"
    )
    for row in rows:
        top1 = f"{row['top1']:.1f}" if row["top1"] is not None else "-"
        peak = row["export_peak_gb"]
        export = f"{peak:.1f}G" if peak else f">{EXPORT_MACHINE_GB}G"
        seconds = f"{row['export_seconds']:.0f}s" if row["export_seconds"] else "-"
        size = f"{row['size']}{'*' if row['fixed_size'] else ''}"
        cached = (
            f"unsupported: {row['unsupported']}"
            if row["unsupported"]
            else (", ".join(row["cached"]) or "-")
        )
        say(
            f"{row['name']:<22}{row['dim']:>6}{size:>6}{row['min_size']:>5}"
            f"{row['params'] / 1e6:>8.1f}M{top1:>7}{export:>8}{seconds:>6}  {cached}"
        )
    say(
        "* takes that size only. export: the memory and time its one-time export to ONNX "
        "took on 2 cores."
    )
    say("Also: --backbone FILE.onnx (any network) or a train-cnn MODEL_DIR.")


def _print_fields(fields: dict, indent: int = 0) -> None:
    for key, value in fields.items():
        if isinstance(value, dict) and value:
            say(f"{' ' * indent}{key}:")
            _print_fields(value, indent + 2)
        else:
            shown = ", ".join(map(str, value)) if isinstance(value, list) else value
            say(f"{' ' * indent}{key}: {shown}")


@main.command()
@click.argument(
    "out_dir", required=False, default="headstart-demo", type=click.Path(path_type=Path)
)
@network_weights_option(
    "imagenet, random or PATH, as in embed. With imagenet and no network, the demo says so "
    "and uses random weights."
)
@click.option("--image-size", default=299, show_default=True, help="As in embed (75 to 2048).")
@shows_progress
def demo(out_dir, weights, image_size) -> None:
    """Tour headstart on built-in sample data, offline too: make labelled sample images
    (OUT_DIR/images) and held-out ones (OUT_DIR/new-images), embed the first into
    OUT_DIR/features, train a logreg head (OUT_DIR/head), predict the held-out images
    (OUT_DIR/predictions.csv) and export the fused model (OUT_DIR/model.onnx). Its first
    run exports InceptionV3 to ONNX, which needs TensorFlow (pip install -e
    '.[tensorflow]'); later runs use the cached export.

    \b
    Example:
      headstart demo                 # writes ./headstart-demo
      headstart demo /tmp/hs --weights random --image-size 139
    """
    from .heads.demo import tour

    for line in tour(out_dir, weights, image_size):
        say(line)
