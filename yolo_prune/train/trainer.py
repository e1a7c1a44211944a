"""PruneTrainer: Ultralytics' DetectionTrainer that prunes while it trains, in one run, ending with a slim model.

Integration through public trainer methods, Ultralytics callbacks and torch's optimizer hooks only:
- `get_model` never rebuilds a given model from its YAML (the trap that silently re-widens pruned models);
- `set_model_attributes` (the model exists; optimizer and EMA do not) builds the pruner and runs the method's
  `setup`; `build_optimizer` adds the method's parameter groups and the optimizer step pre/post hooks (shadow values
  in, the method's `before_optimizer_step`, step, shadows saved, masks re-applied, moments zeroed);
- `_model_train` (Ultralytics' per-epoch switch to train mode; an internal, pinned in tests/train/test_freeze_bn.py):
  with `freeze_bn`, every BatchNorm back to eval mode, so training normalises with the running statistics;
- `on_pretrain_routine_end` (everything built, Ultralytics' resume done): distillation, exact resume state, prune log;
- `on_train_batch_end`: the method's `after_optimizer_step` after a step (the EMA is updated by then), the pruning
  steps of the schedule, one prune_log.csv row each;
- `validate`: the method's `on_epoch_end` with the metrics, and only epochs with the final architecture compete for
  best.pt;
- `save_model` stashes the pruning state (and the exact fp32 training state, for bit-exact resume) on the EMA module
  that Ultralytics pickles into last.pt; `setup_model` reads it back on resume;
- `final_eval` runs the method's `finish` and rewrites last.pt and best.pt as physically slim models before
  Ultralytics validates best.pt.
Where this relies on Ultralytics' order of calls, tests/train/test_hooks.py pins it. DDP children rebuild the trainer
from its module path; the prune settings reach them through $YOLO_PRUNE_SETTINGS.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK
from ultralytics.utils.torch_utils import unwrap_model

from ..checkpoint import STATE_ATTR, is_one_shot_prune, pack_numpy, unpack_numpy
from ..errors import YoloPruneError
from ..methods import get_method
from ..methods.settings import PruneSettings
from ..nn.build import load_model
from . import resume
from .distill import FeatureDistillation
from .finalize import slim_checkpoint
from .log import PruneLog
from .loss import detection_loss
from .pruner import InTrainingPruner
from .quick_val import QuickValidation

SETTINGS_ENV = "YOLO_PRUNE_SETTINGS"


class PruneTrainer(DetectionTrainer):
    """A DetectionTrainer with a pruning method, schedule and exact masks; `prune=None` trains a (slim) model as is."""

    def __init__(self, cfg=DEFAULT_CFG, overrides=None, _callbacks=None, prune: PruneSettings | None = None):
        super().__init__(cfg, overrides, _callbacks)
        if prune is None and RANK != -1 and os.environ.get(SETTINGS_ENV):  # a DDP child of a pruning run
            prune = PruneSettings(**json.loads(os.environ[SETTINGS_ENV]))
        self.prune_settings = (prune or PruneSettings()).validate()
        os.environ[SETTINGS_ENV] = json.dumps(self.prune_settings.to_dict())
        self.pruner: InTrainingPruner | None = None
        self.distill: FeatureDistillation | None = None
        self._from_weights = False  # set by get_model: a trained starting point is what distillation needs
        self._start_ckpt: dict | None = None  # the checkpoint training starts from, once read (setup_model)
        self._nbs_given = "nbs" in (overrides or {}) or self.resume  # a resumed run keeps the nbs it ran with
        self.prune_log = None
        self._resume_state = None
        self._batch = 0
        self._epoch_end_seen = -1  # the last epoch whose end the method was told about
        self.cadence = resume.Cadence()  # where the optimizer steps, for an exact resume
        self._losses: list[tuple[float, float | None]] = []  # (loss, kd_loss) per batch since the last pruning step
        self.add_callback("on_pretrain_routine_end", _on_pretrain_routine_end)
        self.add_callback("on_train_epoch_start", _on_epoch_start)
        self.add_callback("on_train_batch_end", _on_batch_end)
        self.add_callback("on_fit_epoch_end", _on_fit_epoch_end)
        self.add_callback("on_train_epoch_start", resume.on_epoch_start)
        self.add_callback("on_train_batch_end", resume.on_batch_end)

    # -- model --------------------------------------------------------------------------------------------------------
    def get_model(self, cfg=None, weights=None, verbose=True):
        """A given model (slim, masked or pretrained checkpoint) is used as it is; only a YAML is built."""
        self._from_weights = weights is not None
        if isinstance(weights, torch.nn.Module) and not isinstance(cfg, (str, Path)):
            model = weights
            nc = getattr(model.model[-1], "nc", None)
            if nc != self.data["nc"]:
                raise YoloPruneError(
                    f"The checkpoint predicts {nc} classes but the dataset has {self.data['nc']}; a pruned "
                    "model cannot be rebuilt for another class count. Use a dataset with the same classes."
                )
        else:
            model = load_model(cfg, nc=self.data["nc"])
            if weights is not None:
                model.load(weights)
        for p in model.parameters():
            p.requires_grad_(True)
        return self.set_model_names_for_load(model.float())

    def setup_model(self):
        """Ultralytics' setup_model, but checkpoints (`model=x.pt`, `pretrained=x.pt`) are read with yolo-prune's
        restricted unpickler (safe_load.py); an official YOLOv5/YOLOv7 one is imported in memory (nothing written)."""
        pretrained = self.args.pretrained if isinstance(self.args.pretrained, (str, Path)) else None
        if isinstance(self.model, torch.nn.Module) or not (str(self.model).endswith(".pt") or pretrained):
            return super().setup_model()
        cfg, weights, ckpt = self.model, None, None
        if str(self.model).endswith(".pt"):
            weights, ckpt = _read_weights(self.model)
            cfg, self._start_ckpt = weights.yaml, ckpt or {}
        if pretrained and not self.resume:
            weights, _ = _read_weights(pretrained)
        if ckpt is not None and self.resume:
            self._read_resume_state(ckpt)
        self.model = self.get_model(cfg=cfg, weights=weights, verbose=RANK in {-1, 0})
        return ckpt

    def _read_resume_state(self, ckpt: dict):
        """The pruning state stashed in last.pt; the run's settings (method options included) come back from it."""
        self._resume_state = unpack_numpy(getattr(ckpt.get("ema"), STATE_ATTR, None))
        if self._resume_state is not None and "pruner" in self._resume_state:
            self.prune_settings = PruneSettings(**self._resume_state["pruner"]["settings"]).validate()
            os.environ[SETTINGS_ENV] = json.dumps(self.prune_settings.to_dict())

    # -- setup and resume ---------------------------------------------------------------------------------------------
    def check_resume(self, overrides):
        """Check the checkpoint to resume from with the restricted unpickler first (one clear error, before anything
        is written); Ultralytics then reads its arguments under torch's weights-only loader."""
        if not self.args.resume:
            return super().check_resume(overrides)
        from ..safe_load import ultralytics_loads

        path, _ = resume.resume_checkpoint(self.args.resume)
        self.args.resume = str(path)
        with ultralytics_loads(path):
            super().check_resume(overrides)

    def set_model_attributes(self):
        """Ultralytics' hook for the model before compile, DDP, optimizer and EMA: the pruner and the method's setup."""
        super().set_model_attributes()
        self._resolve_freeze_bn()
        settings = self.prune_settings
        if not settings.cut:
            return
        if settings.compensate is None:  # resolved once; a resumed run reads it back from last.pt
            settings.compensate = default_compensate(settings.method, self._from_weights, settings.cut)
        if self._from_weights:  # from weights the default depends on the method and the cut: say which it is
            on = settings.compensate
            LOGGER.info(f"yolo-prune: compensation of masked channels {'on' if on else 'off'} "
                        f"({'--no-compensate' if on else '--compensate'} to switch)")  # fmt: skip
        model = unwrap_model(self.model)
        self.pruner = InTrainingPruner(model, settings, self.epochs, loss=detection_loss)
        self.pruner.setup()

    def _resolve_freeze_bn(self) -> None:
        """--freeze-bn's default, once (a resumed run reads it back from last.pt): on for a fine-tune from weights
        without pruning, unless they are a one-shot prune."""
        settings = self.prune_settings
        if settings.freeze_bn is None:
            fine_tune = self._from_weights and not settings.cut
            if self.resume:
                settings.freeze_bn = bool((self._resume_state or {}).get("freeze_bn"))
            elif fine_tune and self._starts_from_one_shot_prune():
                settings.freeze_bn = False
                if RANK in {-1, 0}:
                    LOGGER.info("yolo-prune: fine-tuning a one-shot prune with BatchNorm batch statistics "
                                "(--freeze-bn freezes them)")  # fmt: skip
            else:
                settings.freeze_bn = fine_tune
        if settings.freeze_bn and RANK in {-1, 0}:
            LOGGER.info("yolo-prune: BatchNorm statistics frozen while training, as at inference (--no-freeze-bn "
                        "disables)")  # fmt: skip

    def _starts_from_one_shot_prune(self) -> bool:
        """A `yolo-prune prune` checkpoint keeps the dense model's BatchNorm statistics, so its fine-tune normalises
        with batch statistics (measured better than frozen ones, docs/results.md). Through the Python API
        (`YOLO(x).train(trainer=PruneTrainer)`) the model arrives built; its file is `args.model`."""
        path = str(self.args.model)
        if self._start_ckpt is None and path.endswith(".pt") and Path(path).is_file():
            try:
                self._start_ckpt = _read_weights(path)[1] or {}
            except YoloPruneError:  # the caller loaded it by other means; unreadable here, so not one of ours
                self._start_ckpt = {}
        return is_one_shot_prune(self._start_ckpt)

    def build_optimizer(self, model, *args, **kwargs):
        """Ultralytics' optimizer, plus the method's parameter groups and the pruner's step hooks."""
        optimizer = super().build_optimizer(model, *args, **kwargs)
        if self.pruner is not None:
            self.pruner.attach_optimizer(optimizer)
        return optimizer

    def _after_setup(self):
        """Everything is built and Ultralytics' own resume is done (on_pretrain_routine_end)."""
        self._setup_distillation(unwrap_model(self.model))
        if self.pruner is None:
            return
        model = unwrap_model(self.model)
        model.register_forward_pre_hook(self._keep_images)  # after the EMA copy: the hook must not be pickled
        self.pruner.ctx.ema = self.ema
        if self._resume_state is not None:
            self._restore_exact_state(self._resume_state)
        if RANK in {-1, 0}:  # ctx.validate: the validation set, now (Ultralytics validates only at epoch ends)
            self.pruner.ctx.val_fn = QuickValidation(self.test_loader, self.data, self.args, self.device, self.save_dir)
            self.pruner.ctx.run_dir = self.save_dir
            g = self.pruner.graph
            self.prune_log = PruneLog(self.save_dir, [x.name for x in g.groups], [x.width for x in g.groups],
                                      self.pruner.base_gflops)  # fmt: skip
            LOGGER.info(
                f"yolo-prune: {self.prune_settings.method} to remove {self.prune_settings.cut:.0%} of "
                f"{self.pruner.base_cost:.2f} {self.pruner.budget.cost.unit} at {self.prune_settings.imgsz}; "
                f"{len(g.groups)} channel groups, "
                f"{len(self.pruner.schedule.positions)} pruning steps between epochs "
                f"{self.pruner.schedule.positions[0]:.2f} and {self.pruner.schedule.positions[-1]:.2f}"
            )

    def get_dataloader(self, dataset_path, batch_size=16, rank=0, mode="train"):
        """The stock loader; for a small training set, fewer batches accumulated per optimizer step (below)."""
        loader = super().get_dataloader(dataset_path, batch_size, rank, mode)
        if mode == "train" and not self._nbs_given:
            self.args.nbs = small_data_nbs(len(loader), self.batch_size, self.args.nbs)
        return loader

    def _setup_distillation(self, model):
        """Freeze a copy of the starting model as teacher (by default when training starts from weights:
        `default_distill`)."""
        settings = self.prune_settings
        weight = settings.distill
        if weight is None:
            if self.resume:  # a resumed run gets its weights from last.pt: it distils if the run it continues did
                on = "distill" in (self._resume_state or {})
            else:
                on = default_distill(settings.method, self._from_weights, settings.cut)
            weight = 1.0 if on else 0.0
        if weight <= 0:
            return
        self.distill = FeatureDistillation(model, weight, batch_statistics=not settings.freeze_bn)
        state = (self._resume_state or {}).get("distill")
        if state is not None:  # the teacher is the run's starting model, not the resumed one
            self.distill.load_state_dict(state)
        self.distill.attach(model)
        LOGGER.info(f"yolo-prune: distilling from the dense starting model (weight {weight:g}; --distill 0 disables)")

    def _keep_images(self, _model, args):
        """The trainer calls the model with its batch dict: the pruner keeps the latest images for compensation."""
        if isinstance(args[0], dict) and self.pruner is not None:
            self.pruner.images = args[0]["img"].detach()

    def _restore_exact_state(self, state):
        """Resume bit-exactly: fp32 weights and EMA (Ultralytics keeps an FP16 EMA and no model), the optimizer entries
        its copy converts to FP16, the pruning state."""
        model = unwrap_model(self.model)
        model.load_state_dict(state["model"])
        self.ema.ema.load_state_dict(state["ema"])
        resume.restore_optimizer(self.optimizer, state["optimizer"])
        self.pruner.load_state_dict(state["pruner"], model, self.ema)

    def _model_train(self):
        """Ultralytics' train mode for the epoch; with `freeze_bn` every BatchNorm normalises with its running
        statistics, which stay as they are (as Ultralytics does for the BNs of frozen layers). Why: on a small set,
        batch statistics of a few mosaic images differ from the statistics the pretrained model was trained with,
        and the weights learn to depend on them; frozen, training changes the network that is evaluated."""
        super()._model_train()
        if self.prune_settings.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    # -- training step ------------------------------------------------------------------------------------------------
    def preprocess_batch(self, batch):
        batch = super().preprocess_batch(batch)
        resume.align_step(self)  # runs after Ultralytics' warm-up set `accumulate`, before it decides to step
        if self.pruner is not None:
            self.pruner.cache(batch)  # for ctx.loss (only when the method asks for cached batches)
        return batch

    # -- checkpoints and validation -----------------------------------------------------------------------------------
    def validate(self):
        """Ultralytics' validation; then the method's on_epoch_end with the metrics. Only epochs with the final
        architecture take part in Ultralytics' best-fitness bookkeeping (which decides best.pt)."""
        best_so_far = self.best_fitness
        metrics, fitness = super().validate()
        if self.pruner is not None:
            self._epoch_end(metrics)
            if not self.pruner.final:
                self.best_fitness = best_so_far  # a step still to come changes the architecture: no best.pt yet
        return metrics, fitness

    def _epoch_end(self, metrics):
        self._epoch_end_seen = self.epoch
        done = self.pruner.epoch_end(unwrap_model(self.model), self.ema, metrics, self.epoch + 1)
        if done is not None and self.prune_log is not None:
            _log_step(self, done, self.epoch + 1)

    def save_model(self):
        state = {"distill": self.distill.state_dict()} if self.distill is not None else {}
        if self.prune_settings.freeze_bn:
            state["freeze_bn"] = True
        if not state and self.pruner is None:
            return self._save_staged()
        ema = self.ema.ema
        if self.pruner is not None:
            state.update({
                "pruner": self.pruner.state_dict(),
                "model": {k: v.detach().clone() for k, v in unwrap_model(self.model).state_dict().items()},
                "ema": {k: v.detach().clone() for k, v in ema.state_dict().items()},
                "optimizer": resume.optimizer_rest(self.optimizer),
                **resume.capture(self),
            })  # fmt: skip
        setattr(ema, STATE_ATTR, pack_numpy(state))  # numpy as tensors: weights-only loaders read last.pt too
        try:
            return self._save_staged()
        finally:
            delattr(ema, STATE_ATTR)

    def _save_staged(self):
        """Ultralytics' save_model, written atomically (it writes last.pt in place)."""
        with resume.staged_weights(self):
            return super().save_model()

    def final_eval(self):
        self._epoch_end_seen = self.epochs  # Ultralytics runs on_fit_epoch_end once more after the final validation
        if self.distill is not None:
            self.distill.remove()
        if (self.pruner is not None or self.distill is not None) and RANK in {-1, 0}:
            for path in (self.last, self.best):
                if path.exists():
                    slim_checkpoint(path, *((self.pruner.graph, self.pruner.finish) if self.pruner else (None, None)))
            if self.prune_log is not None and self.args.plots:  # plots=False: Ultralytics' switch for every plot
                self.prune_log.plot()
        with resume.staged_weights(self, copy_existing=True):  # Ultralytics strips last.pt and best.pt in place
            super().final_eval()


def _read_weights(path) -> tuple[torch.nn.Module, dict | None]:
    from ..nn import importer
    from ..safe_load import load_checkpoint

    if importer.is_foreign(path):
        return load_model(path), None
    return load_checkpoint(path)


MIN_OPTIMIZER_STEPS_PER_EPOCH = 16


def small_data_nbs(batches_per_epoch: int, batch_size: int, nbs: int) -> int:
    """Nominal batch size giving at least 16 optimizer steps an epoch where the data allows (never more than `nbs`).

    Ultralytics accumulates gradients up to `nbs` (64) images per step: on 96 images at batch 16 that is 1.5 steps an
    epoch, 45 in a 30-epoch run, too few for a pruned network to recover between pruning steps. Large datasets keep
    Ultralytics' value (the demo set, 64 batches an epoch, is unchanged); `nbs=...` given by the user is kept.
    """
    accumulate = max(round(nbs / batch_size), 1)
    wanted = max(1, min(accumulate, batches_per_epoch // MIN_OPTIMIZER_STEPS_PER_EPOCH))
    return batch_size * wanted if wanted < accumulate else nbs


# Callbacks are module-level functions (picklable, re-registered by DDP children through __init__).
def _on_epoch_start(trainer: PruneTrainer):
    trainer._batch = 0
    state = trainer._resume_state
    if state is not None:  # first epoch after a resume: continue exactly where the killed run was
        resume.restore(trainer, state)
        trainer._resume_state = None


def _on_pretrain_routine_end(trainer: PruneTrainer):
    trainer._after_setup()


def default_compensate(method: str, from_weights: bool, cut: float) -> bool:
    """Compensation's default: only from weights (a network from scratch has no learned channel correlations to
    hand over), and only for cuts where the method did not measure worse with it (EFFP: from 0.25; docs/results.md)."""
    return from_weights and cut >= get_method(method).compensate_from_cut


def default_distill(method: str, from_weights: bool, cut: float) -> bool:
    """Distillation's default: only from weights (from scratch the starting model knows nothing), and, when the run
    prunes, only for methods that did not measure worse with it (ASFP; docs/results.md)."""
    return from_weights and (not cut or get_method(method).distill_from_weights)


def _on_batch_end(trainer: PruneTrainer):
    trainer._batch += 1
    if trainer.pruner is None:
        return
    items = {k: float(v) for k, v in (trainer.loss_items or {}).items()}
    trainer._losses.append((sum(v for k, v in items.items() if k != "kd_loss"), items.get("kd_loss")))
    position = trainer.epoch + trainer._batch / len(trainer.train_loader)
    done = trainer.pruner.batch_end(unwrap_model(trainer.model), trainer.ema, position)
    if done is not None and trainer.prune_log is not None:
        _log_step(trainer, done, position)


def _on_fit_epoch_end(trainer: PruneTrainer):
    """An epoch without validation (val=False) still ends for the method, after its checkpoint (metrics None)."""
    if trainer.pruner is not None and trainer._epoch_end_seen < trainer.epoch:
        trainer._epoch_end(None)


def _log_step(trainer: PruneTrainer, done: dict, position: float):
    p, losses = trainer.pruner, trainer._losses
    kd = [x for _, x in losses if x is not None]
    row = {**done, "position": position, "gflops": p.masks.gflops(),
           "params": p.graph.params(unwrap_model(trainer.model), p.masks.masks),
           "loss": sum(x for x, _ in losses) / len(losses) if losses else None,
           "kd_loss": sum(kd) / len(kd) if kd else None}  # fmt: skip
    trainer.prune_log.record(row, p.widths(), extra=row.pop("extra", None))
    trainer._losses = []
