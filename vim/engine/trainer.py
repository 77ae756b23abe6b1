"""The training loop: one process or many (DDP under torchrun), resumable to the exact step.

Determinism: the model is initialised from ``seed`` on every process; training randomness (drop path,
mixup) comes from the global RNGs seeded with ``seed + rank``; sample order and augmentation are
functions of (seed, epoch, position) (see :mod:`vim.data.loader`). A checkpoint saves every process's
RNG state and the position in the epoch, so a run resumed from it repeats the uninterrupted run.
"""
import datetime
import logging
import math
import os
import random
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..data import build_dataset, build_eval_loader, build_eval_transform, build_train_loader, \
    build_train_transform, resolve_data_settings
from ..data.loader import steps_per_epoch
from . import distributed as du
from .config import ConfigError, dump_config
from .evaluate import evaluate
from .metrics import MetricsLog, Progress, close_logging, setup_logging
from .model import build_model
from .optim import build_optimizer, build_scheduler
from .plots import write_plots
from .state import (FORMAT, CheckpointError, capture_rng, check_compatible, load_checkpoint, load_model_state,
                    pick_rng, restore_rng, save_atomic)
from .step import ForwardBackward

__all__ = ['train', 'NonFiniteLossError']

logger = logging.getLogger('vim.train')


class NonFiniteLossError(FloatingPointError):
    """The loss (or the gradient norm) became NaN/inf and ``train.nan_policy`` is ``stop``."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def resolve_run_dir(cfg: Dict, output: Optional[str], resume: Optional[str]) -> str:
    if resume:
        return resume if os.path.isdir(resume) else os.path.dirname(os.path.abspath(resume))
    if output:
        return output
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    return os.path.join(cfg['output_dir'], f"{cfg['name']}-{stamp}")


def _build_criterion(soft_targets: bool, smoothing: float) -> nn.Module:
    """timm train.py's choice: soft-target CE under mixup/cutmix (smoothing is folded into the targets), else
    label-smoothing CE, else CE."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    if soft_targets:
        return SoftTargetCrossEntropy()
    return LabelSmoothingCrossEntropy(smoothing) if smoothing > 0 else nn.CrossEntropyLoss()


def _build_mixup(aug: Dict, num_classes: int):
    if not (aug['mixup'] > 0 or aug['cutmix'] > 0):
        return None
    from timm.data import Mixup
    return Mixup(mixup_alpha=aug['mixup'], cutmix_alpha=aug['cutmix'], prob=aug['mixup_prob'],
                 switch_prob=aug['mixup_switch_prob'], mode=aug['mixup_mode'],
                 label_smoothing=aug['label_smoothing'], num_classes=num_classes)


def train(cfg: Dict, output: Optional[str] = None, resume: Optional[str] = None,
          datasets: Optional[Tuple[Any, Any]] = None) -> Dict[str, Any]:
    """Train as ``cfg`` says; returns the summary (also written to ``summary.json``).

    ``output``: the run directory (default ``output_dir/name-<time>``). ``resume``: a run directory or
    a checkpoint file to continue from. ``datasets``: (train, val) dataset objects to use instead of
    ``cfg['data']`` (library use and tests).
    """
    if cfg['train']['cpu_threads']:
        torch.set_num_threads(int(cfg['train']['cpu_threads']))
    info = du.init_distributed(cfg['train']['device'])
    try:
        return _Run(cfg, info, output, resume, datasets).fit()
    except BaseException as err:
        # Into train.log when the run directory exists (the terminal gets the caller's one line); a run whose
        # setup failed never made its directory, so nothing is left behind.
        what = 'interrupted' if isinstance(err, KeyboardInterrupt) else f'failed: {type(err).__name__}: {err}'
        logger.error(f'run {what}', exc_info=not isinstance(err, KeyboardInterrupt), extra={'log_file_only': True})
        raise
    finally:
        close_logging()
        du.shutdown()


class _Run:
    def __init__(self, cfg, info: du.DistInfo, output, resume, datasets):
        self.cfg, self.info = cfg, info
        tcfg, dcfg = cfg['train'], cfg['data']
        setup_logging(None, info.is_main)                    # the terminal only, until the run directory exists
        self.device = info.device
        self.amp = tcfg['amp']
        if self.amp == 'fp16' and self.device.type == 'cpu':
            logger.warning('fp16 autocast on the CPU is slow and poorly supported; bf16 is the CPU choice')

        run_dir = du.broadcast_object(resolve_run_dir(cfg, output, resume) if info.is_main else None)
        self.run_dir = run_dir
        self.ckpt = None
        taken = du.broadcast_object(os.path.exists(os.path.join(run_dir, 'last.pth')) if info.is_main else None)
        if resume:
            self.ckpt = load_checkpoint(resume)
        elif taken:  # every process raises, so none waits for the others
            raise FileExistsError(f"{run_dir} already holds a run (last.pth); continue it with --resume {run_dir} "
                                  f"or pick another --output")

        # identical model initialisation on every process; then per-process training randomness
        seed_everything(cfg['seed'])
        if datasets is None:
            self.train_set = build_dataset(dcfg, 'train', seed=cfg['seed'])
            self.val_set = build_dataset(dcfg, 'val', seed=cfg['seed'],
                                         class_to_idx=getattr(self.train_set, 'class_to_idx', None))
        else:
            self.train_set, self.val_set = datasets
        self.num_classes = self.train_set.num_classes
        # a resumed run takes its weights from the checkpoint, not from the pretrained source again
        model, self.arch = build_model(cfg, self.num_classes, load_pretrained=self.ckpt is None)
        if self.ckpt is not None:
            check_compatible(self.ckpt, self.arch, resume)
        if tcfg['grad_checkpointing']:
            model.set_grad_checkpointing(True)
        self.settings = resolve_data_settings(model, dcfg, cfg['aug'])
        if dcfg['img_size'] is None and 'img_size' in self.arch['kwargs']:
            self.settings['img_size'] = int(self.arch['kwargs']['img_size'])
        seed_everything(cfg['seed'] + info.rank)

        dcfg = {**dcfg, 'pin_memory': bool(dcfg['pin_memory']) and self.device.type == 'cuda'}
        self.train_loader = build_train_loader(
            self.train_set, build_train_transform(self.settings, cfg['aug'], dcfg['in_chans']), dcfg,
            cfg['seed'], info.rank, info.world_size)
        self.val_loader = build_eval_loader(self.val_set, build_eval_transform(self.settings, cfg['aug']), dcfg,
                                            info.rank, info.world_size)
        self.steps_per_epoch = steps_per_epoch(self.train_loader, tcfg['max_steps_per_epoch'])
        self.global_batch = int(dcfg['batch_size']) * info.world_size
        base = cfg['optim']['lr_base_batch']
        self.lr = float(cfg['optim']['lr']) * (self.global_batch / float(base) if base else 1.0)

        if self.device.type == 'cuda':
            torch.backends.cudnn.benchmark = True
        model.to(self.device)
        self.model = model
        self.optimizer = build_optimizer(model, cfg['optim'], self.lr)
        self.scheduler = build_scheduler(self.optimizer, cfg['schedule'], self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == 'fp16')
        self.ema = None
        if tcfg['ema']:
            from timm.utils import ModelEmaV3
            self.ema = ModelEmaV3(model, decay=float(tcfg['ema_decay']), use_warmup=bool(tcfg['ema_warmup']))
        # compiled in place (state_dict keys unchanged), after the EMA copy, which stays eager
        if tcfg['compile'] not in (None, False):
            model.compile(backend='inductor' if tcfg['compile'] is True else tcfg['compile'], mode=tcfg['compile_mode'])
        if tcfg['cuda_graph'] and (self.device.type != 'cuda' or info.world_size > 1):
            raise ConfigError(f"train.cuda_graph needs one CUDA process; this run has {info.world_size} process(es) "
                              f"on {self.device.type}")
        self.ddp = model
        if info.enabled:
            self.ddp = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == 'cuda' else None)
        self.mixup = _build_mixup(cfg['aug'], self.num_classes)
        self.criterion = _build_criterion(self.mixup is not None, float(cfg['aug']['label_smoothing']))
        self.forward_backward = ForwardBackward(self.ddp, self.criterion, self.device, self.amp, self.scaler,
                                                cuda_graph=bool(tcfg['cuda_graph']))

        # Everything that can fail before the first step (data, model, pretrained weights) has run: the run
        # directory is made only now.
        if info.is_main:
            os.makedirs(run_dir, exist_ok=True)
        du.barrier()
        setup_logging(run_dir, info.is_main)
        self.log = MetricsLog(os.path.join(run_dir, 'metrics.jsonl') if info.is_main else None)
        self.epoch, self.step, self.batch_in_epoch = 0, 0, 0
        self.best = {'value': None, 'epoch': None}
        self.accum = {'loss_sum': 0.0, 'loss_count': 0, 'skipped_images': 0, 'skipped_steps': 0}
        if self.ckpt is not None:
            self._restore(self.ckpt)
        self.resolved = {
            'world_size': info.world_size, 'global_batch': self.global_batch, 'lr': self.lr,
            'steps_per_epoch': self.steps_per_epoch, 'total_steps': self.steps_per_epoch * cfg['schedule']['epochs'],
            'num_classes': self.num_classes, 'train_images': len(self.train_set), 'val_images': len(self.val_set),
            'num_params': sum(p.numel() for p in model.parameters()), 'device': str(self.device),
            **self.settings,
        }
        if info.is_main:
            dump_config({**cfg, 'resolved': self.resolved}, os.path.join(run_dir, 'config.yaml'))
            logger.info(f"run directory {run_dir}")
            logger.info(f"model {self.arch['model']} ({self.resolved['num_params'] / 1e6:.2f}M params), "
                        f"{len(self.train_set)} train / {len(self.val_set)} val images, {self.num_classes} classes, "
                        f"{info.world_size} process(es) x batch {dcfg['batch_size']}, lr {self.lr:.3g}, "
                        f"{self.steps_per_epoch} steps/epoch, device {self.device}")

    # ---- checkpoints -------------------------------------------------------------------------------
    def _restore(self, ckpt: Dict) -> None:
        if ckpt.get('format') != FORMAT:
            raise CheckpointError(f"cannot resume from a checkpoint of format {ckpt.get('format')!r}: expected "
                                  f"{FORMAT!r}; start a run from its weights with model.pretrained_file instead (a "
                                  f"released checkpoint, or one from an older vim, whose optimizer state does not "
                                  f"fit this one's parameters)")
        load_model_state(self.model, ckpt['model'], 'resume checkpoint')
        self.optimizer.load_state_dict(ckpt['optimizer'])
        self.scheduler.load_state_dict(ckpt['scheduler'])
        self.scaler.load_state_dict(ckpt['scaler'])
        if self.ema is not None:
            if ckpt.get('model_ema') is None:
                raise CheckpointError('the run uses EMA but the checkpoint has no model_ema')
            load_model_state(self.ema.module, ckpt['model_ema'], 'resume checkpoint (EMA)')
        self.epoch, self.step, self.batch_in_epoch = ckpt['epoch'], ckpt['step'], ckpt['batch_in_epoch']
        self.best = dict(ckpt['best'])
        rng = pick_rng(ckpt.get('rng'), self.info.rank, self.info.world_size)
        accums = ckpt.get('accum') or []
        if rng is None:
            logger.warning(f"checkpoint was written by {len(ckpt.get('rng') or [])} process(es), this run has "
                           f"{self.info.world_size}: training continues, but not bit-for-bit as the original would")
            seed_everything(self.cfg['seed'] + self.info.rank + 7919 * self.step)
        else:
            restore_rng(rng)
            self.accum = dict(accums[self.info.rank])
        self.log.truncate_after(self.step)
        logger.info(f"resumed at epoch {self.epoch + 1}, batch {self.batch_in_epoch}, step {self.step}")

    def _save(self, name: str, also_best: bool = False) -> None:
        rngs = du.all_gather_objects(capture_rng())
        accums = du.all_gather_objects(dict(self.accum))
        if not self.info.is_main:
            return
        ckpt = {
            'format': FORMAT, 'arch': self.arch, 'config': self.cfg,
            'model': self.model.state_dict(),
            'model_ema': self.ema.module.state_dict() if self.ema is not None else None,
            'optimizer': self.optimizer.state_dict(), 'scheduler': self.scheduler.state_dict(),
            'scaler': self.scaler.state_dict(),
            'epoch': self.epoch, 'step': self.step, 'batch_in_epoch': self.batch_in_epoch,
            'best': self.best, 'rng': rngs, 'accum': accums,
        }
        path = os.path.join(self.run_dir, name)
        save_atomic(ckpt, path)
        if also_best:
            save_atomic(ckpt, os.path.join(self.run_dir, 'best.pth'))

    # ---- training -----------------------------------------------------------------------------------
    def _train_step(self, batch) -> Tuple[Optional[float], bool]:
        """One optimiser step. Returns (loss or None if the batch was empty, whether the step was applied)."""
        tcfg = self.cfg['train']
        self.accum['skipped_images'] += batch['skipped']
        empty = batch['images'] is None or len(batch['images']) < 2 and self.mixup is not None
        if du.any_true(empty, self.device):  # every process skips together, or DDP would hang
            self.accum['skipped_steps'] += 1
            return None, False
        images = batch['images'].to(self.device, non_blocking=True)
        targets = batch['targets'].to(self.device, non_blocking=True)
        if self.mixup is not None:
            if len(images) % 2:  # timm's Mixup pairs samples: drop one after an unreadable image
                images, targets = images[:-1], targets[:-1]
            images, targets = self.mixup(images, targets)
        self.scheduler.step_update(self.step)
        loss = self.forward_backward(images, targets)
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg['optim']['clip_grad']
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(clip) if clip else float('inf'))
        loss_value = loss.item()
        bad = not math.isfinite(loss_value) or (self.amp != 'fp16' and not torch.isfinite(grad_norm).item())
        if du.any_true(bad, self.device):
            msg = (f"non-finite loss ({loss_value}) or gradient norm ({grad_norm.item()}) at epoch {self.epoch + 1}, "
                   f"step {self.step}")
            if tcfg['nan_policy'] == 'stop':
                raise NonFiniteLossError(msg + ": stopping (lower optim.lr, set optim.clip_grad, prefer amp=bf16 "
                                         "over fp16, or set train.nan_policy=skip to skip such steps)")
            logger.warning(msg + ': step skipped (train.nan_policy=skip)')
            self.accum['skipped_steps'] += 1
            return loss_value, False
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        self.accum['loss_sum'] += loss_value
        self.accum['loss_count'] += 1
        return loss_value, True

    def _run_epoch(self) -> float:
        tcfg = self.cfg['train']
        bs = self.train_loader.batch_size
        self.train_loader.sampler.set_epoch(self.epoch, start=self.batch_in_epoch * bs)
        self.ddp.train()
        progress = Progress(self.steps_per_epoch, self.epoch, self.cfg['schedule']['epochs'], tcfg['progress'],
                            tcfg['log_every'], enabled=self.info.is_main)
        if self.batch_in_epoch:
            progress.done = self.batch_in_epoch
            if progress.bar is not None:
                progress.bar.update(self.batch_in_epoch)
        save_every = int(tcfg['save_every_steps'] or 0)
        try:
            for batch in self.train_loader:
                if self.batch_in_epoch >= self.steps_per_epoch:
                    break
                loss, _ = self._train_step(batch)
                self.step += 1
                self.batch_in_epoch += 1
                lr = self._lr()
                if loss is not None:
                    progress.update(self.batch_in_epoch, int(len(batch['images'])) * self.info.world_size, loss, lr)
                    if self.step % tcfg['log_every'] == 0:
                        self.log.write({'type': 'step', 'epoch': self.epoch, 'step': self.step, 'loss': loss, 'lr': lr})
                if save_every and self.step % save_every == 0 and self.batch_in_epoch < self.steps_per_epoch:
                    self._save('last.pth')
        finally:
            progress.close()
        return progress.throughput()

    def _lr(self) -> float:
        """The schedule's current peak lr (the group with lr_scale 1; layer decay scales the others)."""
        return max(g['lr'] for g in self.optimizer.param_groups)

    def _epoch_end(self, throughput: float, epoch_time: float) -> Tuple[Dict[str, Any], bool]:
        tcfg, epochs = self.cfg['train'], self.cfg['schedule']['epochs']
        sums = torch.tensor([self.accum['loss_sum'], self.accum['loss_count'], self.accum['skipped_images'],
                             self.accum['skipped_steps']], dtype=torch.float64, device=self.device)
        du.all_reduce_sum(sums)
        row = {'type': 'epoch', 'epoch': self.epoch + 1, 'step': self.step,
               'lr': self._lr(),
               'train_loss': sums[0].item() / max(sums[1].item(), 1.0),
               'skipped_images': int(sums[2].item()), 'skipped_steps': int(sums[3].item() / self.info.world_size),
               'images_per_s': throughput, 'epoch_time_s': epoch_time}
        improved = False
        if (self.epoch + 1) % tcfg['eval_every'] == 0 or self.epoch + 1 == epochs:
            raw = evaluate(self.model, self.val_loader, self.device, self.amp)
            row.update(val_loss=raw['loss'], val_top1=raw['top1'], val_top5=raw['top5'],
                       val_skipped_images=raw['skipped'])
            if self.ema is not None:
                ema = evaluate(self.ema.module, self.val_loader, self.device, self.amp)
                row.update(ema_loss=ema['loss'], ema_top1=ema['top1'], ema_top5=ema['top5'])
            value = row['val_top1'] if tcfg['best_metric'] == 'top1' else row['ema_top1']
            if self.best['value'] is None or value > self.best['value']:
                self.best = {'value': value, 'epoch': self.epoch + 1}
                improved = True
        row['best_' + tcfg['best_metric']] = self.best['value']
        return row, improved

    def fit(self) -> Dict[str, Any]:
        epochs = self.cfg['schedule']['epochs']
        start_time = time.time()
        last_row = None
        while self.epoch < epochs:
            t0 = time.time()
            throughput = self._run_epoch()
            row, improved = self._epoch_end(throughput, time.time() - t0)
            last_row = row
            if row['skipped_images'] and self.info.is_main:
                logger.warning(f"epoch {self.epoch + 1}: skipped {row['skipped_images']} unreadable image(s)")
            self.log.write(row)
            self._log_row(row)
            self.epoch += 1
            self.batch_in_epoch = 0
            self.accum = {'loss_sum': 0.0, 'loss_count': 0, 'skipped_images': 0, 'skipped_steps': 0}
            self._save('last.pth', also_best=improved)
            if self.info.is_main and self.cfg['train']['plots']:
                write_plots(self.log.rows(), self.run_dir)
        summary = {'run_dir': self.run_dir, 'epochs': epochs, 'steps': self.step,
                   'best_metric': self.cfg['train']['best_metric'], 'best': self.best['value'],
                   'best_epoch': self.best['epoch'], 'final': last_row,
                   'train_time_s': time.time() - start_time}
        if self.info.is_main:
            import json
            with open(os.path.join(self.run_dir, 'summary.json'), 'w') as f:
                json.dump(summary, f, indent=2)
            logger.info(f"done: best {summary['best_metric']} {summary['best']} at epoch {summary['best_epoch']}; "
                        f"checkpoints and metrics in {self.run_dir}")
        return summary

    def _log_row(self, row: Dict[str, Any]) -> None:
        parts = [f"epoch {row['epoch']}/{self.cfg['schedule']['epochs']}", f"train loss {row['train_loss']:.4f}"]
        if 'val_top1' in row:
            parts.append(f"val top-1 {row['val_top1']:.2f}% top-5 {row['val_top5']:.2f}%")
        if 'ema_top1' in row:
            parts.append(f"EMA top-1 {row['ema_top1']:.2f}% top-5 {row['ema_top5']:.2f}%")
        parts.append(f"{row['images_per_s']:.0f} img/s, {row['epoch_time_s']:.1f}s")
        logger.info(' | '.join(parts))

