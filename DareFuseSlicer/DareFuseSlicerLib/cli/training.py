"""`darefuse train`, `train-prior`, `adapt` and `evaluate`. Heavy imports happen inside the handlers."""
from __future__ import annotations

import argparse

from ..constants import PSEUDO_LABEL_MAX_UNCERTAINTY


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="train DareFuseNet (or the SegResNet baseline) on data-engine cases",
        description="Train on a folder written by `darefuse phantoms` (manifest.csv). Runs unchanged under "
        "`torchrun --nproc_per_node N` (DDP; gloo on CPU, nccl on GPU).",
    )
    train.add_argument("--data", required=True, help="training folder (manifest.csv and the case files)")
    train.add_argument("--val", help="validation folder, scored after every epoch")
    train.add_argument("--clinical", metavar="DIR",
                       help="clinical (whole-head) cases from `darefuse phantoms --acquisition clinical`, mixed into "
                            "the training; each is prepared once, by the pipeline's own front end (brain mask, "
                            "registration, resampling onto the reference grid), into the cache")
    train.add_argument("--clinical-ratio", type=float, metavar="R",
                       help="share of each epoch's crops drawn from the --clinical cases (default 0.5)")
    train.add_argument("--clinical-val", metavar="DIR",
                       help="clinical validation folder, scored apart after every epoch (val_clinical_* columns)")
    train.add_argument("--class-head-only", action="store_true",
                       help="train the class head of the --init model alone: the segmentation, its uncertainty and "
                            "the prior stay bit for bit as they were (no --resume)")
    train.add_argument("--out", required=True, help="run folder: checkpoint.pt, metrics.csv, train.log, the model")
    train.add_argument("--epochs", type=int, help="number of epochs")
    train.add_argument("--minutes", type=float, help="wall-clock budget for the training steps")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--labelled-fraction", type=float, default=1.0,
                       help="fraction of cases keeping their segmentation (the rest: class only, mean teacher)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    train.add_argument("--init", metavar="MODEL.safetensors",
                       help="start from this stored model's weights (fine-tuning; its card must match)")
    train.add_argument("--arch", choices=("darefuse", "segresnet"), default="darefuse")
    train.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    train.add_argument("--roi", type=int, nargs=3, default=(64, 80, 64), metavar=("Z", "Y", "X"),
                       help="training crop on the 2 mm grid (an adult brain box is about 80 96 80)")
    train.add_argument("--batch-size", type=int, default=2, help="cases per step and process")
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--cache", help="pre-processing cache folder (default: DATA/.darefuse-cache)")
    train.add_argument("--threads", type=int, help="torch threads per process (default: cores / processes)")
    train.add_argument("--contrast-dropout", type=float, default=0.5)
    train.add_argument("--prior-dropout", type=float, default=0.2)
    train.add_argument("--max-cases", type=int, help="use only the first N cases of DATA (and of --clinical)")
    train.add_argument("--val-cases", type=int, default=12, help="validation cases scored after each epoch (of VAL, and of --clinical-val)")
    train.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                       help="bf16: forward passes under bfloat16 autocast (a step 0.64x as long on a CPU with AMX, "
                            "1.5x as long on one without bfloat16 in hardware: benchmarks/bench_train_step.py)")
    train.add_argument("--loader-workers", type=int, default=0, metavar="N",
                       help="processes preparing the augmented crops (default 0: in the training process); "
                            "the same crops for any N. Worth it on a GPU, which otherwise waits on them")
    train.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    train.set_defaults(handler=_train)

    for add in (_register_adapt, _register_prior, _register_kle, _register_brainmask):
        add(subparsers)

    evaluate = subparsers.add_parser(
        "evaluate",
        help="score models on held-out engine cases at the BraTS grid (JSON + markdown report)",
        description="Dice and HD95 (WT/TC/ET) before and after post-processing, classification, uncertainty, "
        "false positives on tumour-free cases with and without the prior; one row per model.",
    )
    evaluate.add_argument("--data", required=True, help="held-out folder (manifest.csv), seeds never used in training")
    evaluate.add_argument("--model", action="append", required=True, metavar="[NAME=]PATH",
                          help="a .safetensors model (repeat for the baseline, label fractions, ...)")
    evaluate.add_argument("--tune", help="validation folder on which the post-processing thresholds and the review "
                          "regions' settings are chosen")
    evaluate.add_argument("--out", required=True, help="report stem: writes OUT.json and OUT.md")
    evaluate.add_argument("--max-cases", type=int, help="use only the first N cases")
    evaluate.add_argument("--device", choices=("cpu", "cuda"))
    evaluate.add_argument("--threads", type=int, default=2)
    evaluate.add_argument("--record", action="store_true", help="also write the summary into each model's card")
    evaluate.add_argument("--contrasts", metavar="LIST",
                          help="comma-separated contrasts given to the models, e.g. t1ce,flair (default: all four; "
                               "the others are missing, on the held-out and the tuning cases alike)")
    evaluate.add_argument("--class-gate", metavar="P|none",
                          help="clear the map when the class head's P(no tumour) reaches P (none: no gate), instead "
                               "of the card's or the tuned gate; with --record it goes into the card")
    evaluate.add_argument("--brainmask", metavar="PATH",
                          help="brain-mask network (.safetensors with its card) for whole-head cases instead of the "
                               "bundled one: a candidate judged with the segmentation in the loop; not with --record")
    evaluate.set_defaults(handler=_evaluate)


def _register_adapt(subparsers) -> None:
    adapt = subparsers.add_parser(
        "adapt",
        help="fine-tune a stored model to a site's own studies: a few labelled, the rest unlabelled",
        description="Folders in the BraTS naming (<case>-t1n/-t1c/-t2w/-t2f.nii.gz; a labelled case also "
        "<case>-seg.nii.gz); no tumour-free twins, no manifest needed. Starts from --init's weights (checked "
        "against its card), trains on the labelled cases and on the unlabelled ones through the mean teacher's "
        "pseudo-labels, kept where its one-pass uncertainty is below --max-uncertainty (or below per-class "
        "thresholds calibrated on the labelled cases, --pseudo-precision). The lesion-removal "
        "generator stays frozen at --init's weights: without twins it cannot be trained. Writes "
        "OUT/darefuse.safetensors and its card (site data by counts and SHA256 per file); Ctrl-C writes no model. "
        "On a simulated site (README: label curve) a short run's gain was within its own run-to-run spread: evaluate "
        "the result on held-out studies of the site before using it.",
    )
    adapt.add_argument("--init", required=True, metavar="MODEL.safetensors", help="the model to adapt")
    adapt.add_argument("--labelled", required=True, metavar="DIR", help="contoured cases (each with -seg.nii.gz)")
    adapt.add_argument("--unlabelled", metavar="DIR",
                       help="cases without contours (without it: fine-tuning on the labelled cases alone)")
    adapt.add_argument("--out", required=True, help="run folder: adapt.log and the model")
    adapt.add_argument("--minutes", type=float, default=60.0, help="wall-clock budget for the steps (default 60)")
    adapt.add_argument("--epochs", type=int, help="passes over the unlabelled cases, else the labelled ones "
                                                   "(whichever of --epochs and --minutes ends first)")
    adapt.add_argument("--steps", type=int, help="optimiser steps (a budget independent of the machine's load)")
    adapt.add_argument("--seed", type=int, default=0)
    thresholds = adapt.add_mutually_exclusive_group()
    thresholds.add_argument("--max-uncertainty", type=float, default=PSEUDO_LABEL_MAX_UNCERTAINTY,
                            help="keep a pseudo-label where the teacher's uncertainty K/sum(alpha) is below this, "
                                 f"for every class (default {PSEUDO_LABEL_MAX_UNCERTAINTY}, not tuned)")
    thresholds.add_argument("--pseudo-precision", type=float, metavar="P",
                            help="instead, one threshold per class, calibrated on the labelled cases so that the "
                                 "starting model's kept labels of that class were right at least P of the time")
    adapt.add_argument("--background-precision", type=float, metavar="P0",
                       help="with --pseudo-precision: calibrate background's threshold to this precision instead "
                            "(a wrong background label is always tumour)")
    adapt.add_argument("--pseudo-weight", type=float, default=1.0, help="weight of the pseudo-label loss")
    adapt.add_argument("--ramp-up", type=int, default=0, metavar="STEPS",
                       help="raise the pseudo-label weight to --pseudo-weight over the first STEPS steps "
                            "(default 0: full weight from the first step)")
    adapt.add_argument("--perturb-student", action="store_true",
                       help="the student sees a strongly perturbed copy (intensity, bias field, blur, noise) of each "
                            "unlabelled crop, the teacher the crop itself")
    adapt.add_argument("--pseudo-class-gate", type=float, metavar="P",
                       help="pseudo-label an unlabelled crop background throughout where the teacher's class head "
                            "gives P(no tumour) >= P (default: no gate)")
    adapt.add_argument("--background-margin", type=float, default=0.0, metavar="MM",
                       help="keep no background pseudo-label within MM of the teacher's tumour (default 0: none "
                            "held back)")
    adapt.add_argument("--balance-pseudo-classes", action="store_true",
                       help="weigh each class of the kept pseudo-labels the same in their loss (default: each voxel)")
    adapt.add_argument("--roi", type=int, nargs=3, default=(64, 80, 64), metavar=("Z", "Y", "X"))
    adapt.add_argument("--batch-size", type=int, default=1, help="labelled crops per step, and as many unlabelled")
    adapt.add_argument("--lr", type=float, default=5e-4)
    adapt.add_argument("--ema-decay", type=float, default=0.99, help="the mean teacher's decay")
    adapt.add_argument("--contrast-dropout", type=float, default=0.5)
    adapt.add_argument("--prior-dropout", type=float, default=0.2)
    adapt.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    adapt.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    adapt.add_argument("--cache", metavar="DIR", help="keep the prepared cases here for later runs on the same "
                       "studies (reused only while every file's SHA256 matches)")
    adapt.add_argument("--no-progress", action="store_true", help="no progress bar")
    adapt.set_defaults(handler=_adapt)


def _adapt(args: argparse.Namespace) -> int:
    from ..training.adapt import AdaptOptions, adapt

    options = AdaptOptions(
        init=args.init, labelled=args.labelled, unlabelled=args.unlabelled, out=args.out, minutes=args.minutes,
        epochs=args.epochs, steps=args.steps, seed=args.seed, max_uncertainty=args.max_uncertainty,
        pseudo_precision=args.pseudo_precision, background_precision=args.background_precision, roi=tuple(args.roi),
        batch_size=args.batch_size, lr=args.lr, threads=args.threads, device=args.device,
        pseudo_weight=args.pseudo_weight, ramp_up=args.ramp_up, perturb_student=args.perturb_student,
        pseudo_class_gate=args.pseudo_class_gate, background_margin=args.background_margin,
        balance_pseudo_classes=args.balance_pseudo_classes,
        ema_decay=args.ema_decay, contrast_dropout=args.contrast_dropout,
        prior_dropout=args.prior_dropout, cache=args.cache,
    )
    return _run_model_job(lambda progress, log: adapt(options, progress=progress), args)


def _run_model_job(job, args: argparse.Namespace) -> int:
    """job(progress, log) -> the saved model's path, under a progress bar (log lines with --no-progress);
    SIGTERM stops it as Ctrl-C does, so no model is written."""
    from . import terminate_as_interrupt

    bar = None if args.no_progress else _TqdmProgress()
    try:
        with terminate_as_interrupt():
            path = job(bar, lambda line: print(line, flush=True))
    finally:
        if bar is not None:
            bar.close()
    print(f"model: {path}")
    return 0


class _TqdmProgress:
    """progress(fraction, message) as a tqdm bar, the message (with the time left) beside it."""

    def __init__(self):
        from tqdm import tqdm

        self.bar = tqdm(total=1000, dynamic_ncols=True, bar_format="{percentage:3.0f}%|{bar:20}| {desc}")

    def __call__(self, fraction: float, message: str) -> None:
        self.bar.n = int(1000 * min(max(fraction, 0.0), 1.0))
        self.bar.set_description_str(message)

    def close(self) -> None:
        self.bar.close()


def _register_prior(subparsers) -> None:
    prior = subparsers.add_parser(
        "train-prior",
        help="train the lesion-removal prior without tumour-free twins (inpainting of hidden healthy tissue)",
        description="Folders in the BraTS naming, each case with <case>-seg.nii.gz; -tumourfree files are never "
        "read. Hides a checkerboard of cubes from the generator's input and trains it to fill the hidden healthy "
        "voxels (outside the -seg tumour); at inference two passes hide every voxel once. The generator starts "
        "from scratch; every other weight is --init's, frozen. Writes OUT/darefuse.safetensors and its card; "
        "Ctrl-C writes nothing.",
    )
    _add_prior_run_arguments(prior, "labelled cases (repeatable)")
    prior.add_argument("--minutes", type=float, help="wall-clock budget for the steps")
    prior.add_argument("--steps", type=int, help="training steps (whichever of --steps and --minutes ends first)")
    prior.add_argument("--seed", type=int, default=0)
    prior.add_argument("--block", type=int, default=12, help="side of the hidden cubes in 2 mm voxels (default 12)")
    prior.add_argument("--tumour-margin", type=int, default=1, help="voxels around the tumour left out of the loss")
    prior.add_argument("--roi", type=int, nargs=3, default=(64, 80, 64), metavar=("Z", "Y", "X"))
    prior.add_argument("--batch-size", type=int, default=2)
    prior.add_argument("--lr", type=float, default=2e-3)
    prior.add_argument("--contrast-dropout", type=float, default=0.5)
    prior.add_argument("--max-cases", type=int, help="use only the first N cases")
    prior.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    prior.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda when available, else cpu")
    prior.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    prior.set_defaults(handler=_train_prior)


def _train_prior(args: argparse.Namespace) -> int:
    from ..training.prior import PriorOptions, train_prior

    options = PriorOptions(
        init=args.init, data=list(args.data), out=args.out, minutes=args.minutes, steps=args.steps, seed=args.seed,
        block=args.block, tumour_margin=args.tumour_margin, roi=tuple(args.roi), batch_size=args.batch_size,
        lr=args.lr, contrast_dropout=args.contrast_dropout, max_cases=args.max_cases, threads=args.threads,
        device=args.device,
    )
    return _run_model_job(lambda progress, log: train_prior(options, progress=progress, log=log), args)


def _add_prior_run_arguments(parser, data_help: str) -> None:
    """--init, --data and --out, as train-prior and fit-kle take them."""
    parser.add_argument("--init", required=True, metavar="MODEL.safetensors", help="the network around the prior")
    parser.add_argument("--data", required=True, action="append", metavar="DIR", help=data_help)
    parser.add_argument("--out", required=True, help="run folder for the model and its card")


def _register_kle(subparsers) -> None:
    kle = subparsers.add_parser(
        "fit-kle",
        help="fit seed 001's KLE residual prior on a site's studies (no twins, no labels, nothing trained)",
        description="PCA of the studies' whole-brain windows (each cropped to its brain and resized to SIZE^3 per "
        "contrast); writes OUT/darefuse.safetensors: the --init model with this expansion as its lesion-removal "
        "prior, and its card (the studies by count and SHA256).",
    )
    _add_prior_run_arguments(kle, "studies in the BraTS naming, all four contrasts each (repeatable; -seg files "
                                  "are not read)")
    kle.add_argument("--components", type=int, default=32, help="terms of the expansion (default 32, as seed 001)")
    kle.add_argument("--size", type=int, default=48, help="side of the expansion's grid (default 48, as seed 001)")
    kle.add_argument("--max-cases", type=int, help="use only the first N studies")
    kle.add_argument("--no-progress", action="store_true", help="log lines instead of a progress bar")
    kle.set_defaults(handler=_fit_kle)


def _fit_kle(args: argparse.Namespace) -> int:
    from ..training.kle_prior import KLEOptions, fit_kle_prior

    options = KLEOptions(init=args.init, data=list(args.data), out=args.out, components=args.components,
                         size=args.size, max_cases=args.max_cases)
    return _run_model_job(lambda progress, log: fit_kle_prior(options, progress=progress, log=log), args)


def _register_brainmask(subparsers) -> None:
    mask = subparsers.add_parser(
        "train-brainmask",
        help="train the brain-mask network on the data engine's whole-head (clinical) cases",
        description="Every contrast of every clinical case is a sample (randomised contrast, resolution and pose); "
        "trains the coarse stage (4 mm head cube) and then the fine stage (2 mm box around the brain); writes "
        "OUT/brainmask.safetensors and its card (validation Dice per reference contrast).",
    )
    mask.add_argument("--data", required=True, action="append", help="clinical training folder (repeatable)")
    mask.add_argument("--val", help="clinical validation folder, scored at the end")
    mask.add_argument("--out", required=True, help="run folder")
    mask.add_argument("--steps", type=int, default=3000, help="training steps of the fine stage")
    mask.add_argument("--coarse-steps", type=int, default=1000, help="training steps of the coarse stage")
    mask.add_argument("--seed", type=int, default=0)
    mask.add_argument("--batch-size", type=int, default=2)
    mask.add_argument("--lr", type=float, default=2e-3)
    mask.add_argument("--threads", type=int, default=2)
    mask.add_argument("--window", type=int, default=64, help="side of the fine stage's training windows (2 mm voxels)")
    mask.add_argument("--fine-channels", default="16,32,64,128,256", metavar="LIST",
                      help="channels per level of the fine stage's U-Net (comma-separated)")
    mask.add_argument("--tumour-weight", type=float, default=1.0,
                      help="weight of tumour voxels in the fine stage's cross-entropy (a cut surface tumour costs more)")
    mask.add_argument("--cache", help="sample cache folder (default: the first DATA/.brainmask-cache)")
    mask.set_defaults(handler=_train_brainmask)

    tune = subparsers.add_parser(
        "tune-brainmask",
        help="choose the brain-mask network's threshold and opening on clinical development cases",
        description="Scores every threshold x opening x margin on DATA (each contrast the reference in turn, or with "
        "--fuse the pipeline's reference with the mean share of every registered contrast) and "
        "prints a table: the mask's Dice, and the tumour voxels outside the mask grown by the margin (the region "
        "the segmentation network sees). For the given --margin, the best mean Dice among the settings whose "
        "region leaves no more tumour outside than the plain mask (0.5, no opening, no margin) is chosen. "
        "--record writes it into the model's card (mask_settings), which the pipeline then uses.",
    )
    tune.add_argument("--model", required=True, help="brain-mask network (.safetensors with its card)")
    tune.add_argument("--data", required=True, help="clinical development folder (never a held-out one)")
    tune.add_argument("--margin", type=float, default=0.0, metavar="MM",
                      help="how far beyond the mask the segmentation network looks, mm (one of the margins scored; "
                      "default 0): chosen with the segmentation in the loop (darefuse evaluate on development "
                      "cases), not here")
    tune.add_argument("--fuse", action="store_true",
                      help="score the mask given out when it is made from every contrast's share (each registered "
                      "to the reference, as the pipeline does) instead of each contrast's own mask; its tumour "
                      "column is then what lies beyond the mask grown by the margin, out of reach of the segmented "
                      "tumour the mask given out adds; --record makes the pipeline fuse")
    tune.add_argument("--record", action="store_true", help="write the chosen setting into the model's card")
    tune.add_argument("--threads", type=int, default=2)
    tune.set_defaults(handler=_tune_brainmask)


def _train(args: argparse.Namespace) -> int:
    from ..training.train import TrainOptions, train

    options = TrainOptions(
        data=args.data, out=args.out, val=args.val, epochs=args.epochs, minutes=args.minutes, seed=args.seed,
        labelled_fraction=args.labelled_fraction, resume=args.resume, init=args.init, arch=args.arch, device=args.device,
        roi=tuple(args.roi), batch_size=args.batch_size, lr=args.lr, cache=args.cache, threads=args.threads,
        contrast_dropout=args.contrast_dropout, prior_dropout=args.prior_dropout, max_cases=args.max_cases,
        val_cases=args.val_cases, precision=args.precision, loader_workers=args.loader_workers,
        progress=not args.no_progress, clinical=args.clinical, clinical_ratio=args.clinical_ratio,
        clinical_val=args.clinical_val, class_head_only=args.class_head_only,
    )
    path = train(options)
    if path is not None:
        print(f"model: {path}")
    return 0


def _train_brainmask(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from ..training.brainmask import BrainMaskTrainOptions, train_brainmask

    options = BrainMaskTrainOptions(
        data=args.data, val=args.val, out=args.out, steps=args.steps, coarse_steps=args.coarse_steps, seed=args.seed,
        batch_size=args.batch_size, lr=args.lr, threads=args.threads, cache=args.cache, window=args.window,
        fine_channels=_channels(args.fine_channels), tumour_weight=args.tumour_weight,
        command="darefuse " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    )
    print(f"model: {train_brainmask(options, log=lambda line: print(line, flush=True))}")
    return 0


def _tune_brainmask(args: argparse.Namespace) -> int:
    from pathlib import Path

    import SimpleITK as sitk
    import torch

    from ..network.store import load_model, record_metrics
    from ..errors import OptionError
    from ..training.brainmask import (MARGINS_MM, chosen_setting, clinical_rows, recorded_mask_settings,
                                      setting_scores)

    if args.margin not in MARGINS_MM:
        raise OptionError(f"{{margin}} {args.margin:g}: give one of the margins scored, "
                          f"{', '.join(f'{m:g}' for m in MARGINS_MM)} (mm).", "margin")
    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    model = load_model(args.model)
    scores = setting_scores(model, Path(args.data), log=lambda line: print(line, flush=True), fuse=args.fuse)
    best = chosen_setting(scores, args.margin)
    print("| threshold | opening (mm) | margin (mm) | Dice mean | worst | tumour voxels outside the margin |\n"
          "|---|---|---|---|---|---|")
    for s in scores:
        mark = " (chosen)" if s is best else ""
        print(f"| {s['threshold']} | {s['opening_mm']:g} | {s['margin_mm']:g}{mark} | {s['mean_dice']:.4f} | "
              f"{s['worst_dice']:.4f} | {s['tumour_voxels_outside']} |")
    if args.record:
        seeds = [int(row["seed"]) for row in clinical_rows(Path(args.data))]
        settings = recorded_mask_settings(model.card, best, args.fuse, seeds)
        print(f"recorded in {record_metrics(args.model, 'tuning', best, mask_settings=settings)}")
    return 0


def _channels(text: str) -> tuple:
    from ..errors import OptionError

    try:
        channels = tuple(int(v) for v in text.split(","))
    except ValueError:
        channels = ()
    if len(channels) < 2 or min(channels) < 1:
        raise OptionError(f"{{fine_channels}} {text}: give two or more positive whole numbers, e.g. 16,32,64,128,256.",
                          "fine_channels")
    return channels


def _evaluate(args: argparse.Namespace) -> int:
    from ..training.evaluate import run_evaluation

    json_path, md_path = run_evaluation(
        data=args.data, models=args.model, out=args.out, tune=args.tune, max_cases=args.max_cases,
        device=args.device, threads=args.threads, record=args.record, contrasts=args.contrasts,
        class_gate=args.class_gate, brainmask=args.brainmask,
    )
    print(f"report: {json_path} and {md_path}")
    return 0
