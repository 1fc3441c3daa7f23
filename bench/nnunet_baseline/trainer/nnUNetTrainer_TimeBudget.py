"""nnU-Net's default trainer under a wall-clock budget, with batch size 8 (CPU baseline for tumorseg).

Found by nnU-Net through ``nnUNet_extTrainer`` pointing at this folder (run.sh sets it), so the installed
package is never modified. Keep this folder free of other modules: nnU-Net imports every module in it.

Changes from ``nnUNetTrainer``, and why:
- Training stops after ``NNUNET_TIME_LIMIT_S`` seconds (default 600), checked after every training iteration,
  so it can be compared with the project's models, which train within a 10-minute budget. The clock starts
  at the first epoch (after data-loader set-up) and includes the per-epoch pseudo-validation; the epoch in
  which time runs out is cut short, gets a short (1/10) pseudo-validation for the log, and ends normally
  (``checkpoint_final.pth``).
- The learning rate follows nnU-Net's poly curve, lr0 * (1 - t)^0.9, over elapsed *time* instead of over
  1000 epochs: a few CPU epochs would otherwise stay at lr ~ lr0 and never anneal. (The "Current learning
  rate" line nnU-Net logs at each epoch start is its epoch schedule, overridden by the first iteration.)
- Batch size ``NNUNET_BATCH_SIZE`` (default 8) instead of the planned one (62 for this dataset's 96 x 80
  patches, sized for a GPU): on a few CPU cores a batch of 62 takes seconds, leaving a few dozen steps.
- nnU-Net's final validation (sliding-window prediction of the fold's validation patients) is skipped
  (``NNUNET_SKIP_FINAL_VAL=0`` restores it): it takes minutes on CPU, and run.sh scores the test patients
  with the project's own metric instead.
- ``NNUNET_TORCH_THREADS`` (default 2) torch intra-op threads.
Everything else (250 iterations/epoch, 50 pseudo-val iterations, SGD lr 1e-2, augmentation, loss,
checkpoint_best by EMA pseudo Dice) is nnU-Net's default.
"""
import os
from copy import deepcopy
from time import time

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_TimeBudget(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        torch.set_num_threads(int(os.environ.get('NNUNET_TORCH_THREADS', '2')))
        self.time_limit_s = float(os.environ.get('NNUNET_TIME_LIMIT_S', '600'))
        self.forced_batch_size = int(os.environ.get('NNUNET_BATCH_SIZE', '8'))
        plans = deepcopy(plans)  # the changed batch size also lands in the plans.json saved with the results
        plans['configurations'][configuration]['batch_size'] = self.forced_batch_size
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.print_to_log_file(f'[time budget] batch_size={self.forced_batch_size}, time limit={self.time_limit_s:.0f} s, '
                               f'torch threads={torch.get_num_threads()}, '
                               f"nnUNet_n_proc_DA={os.environ.get('nnUNet_n_proc_DA')}")

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()
        assert self.batch_size == self.forced_batch_size, (self.batch_size, self.forced_batch_size)

    def perform_actual_validation(self, save_probabilities: bool = False):
        if os.environ.get('NNUNET_SKIP_FINAL_VAL', '1') == '1':
            self.print_to_log_file('[time budget] final validation skipped (the test patients are scored separately)')
            return
        return super().perform_actual_validation(save_probabilities)

    def _set_time_poly_lr(self, elapsed_s: float) -> None:
        frac = min(1.0, elapsed_s / self.time_limit_s)
        for g in self.optimizer.param_groups:
            g['lr'] = self.initial_lr * (1 - frac) ** 0.9

    def run_training(self):
        """nnUNetTrainer.run_training plus the per-iteration time check and time-based lr."""
        self.on_train_start()
        t_start = time()
        deadline = t_start + self.time_limit_s
        n_iter_total = 0
        time_up = False
        for epoch in range(self.current_epoch, self.num_epochs):
            self.on_epoch_start()
            self.on_train_epoch_start()
            train_outputs = []
            for _ in range(self.num_iterations_per_epoch):
                self._set_time_poly_lr(time() - t_start)
                train_outputs.append(self.train_step(next(self.dataloader_train)))
                n_iter_total += 1
                if time() >= deadline:
                    time_up = True
                    break
            self.on_train_epoch_end(train_outputs)

            with torch.no_grad():
                self.on_validation_epoch_start()
                n_val = self.num_val_iterations_per_epoch if not time_up else max(1, self.num_val_iterations_per_epoch // 10)
                val_outputs = [self.validation_step(next(self.dataloader_val)) for _ in range(n_val)]
                self.on_validation_epoch_end(val_outputs)

            self.on_epoch_end()
            self.print_to_log_file(f'[time budget] epoch {epoch}: {len(train_outputs)} train it, lr now '
                                   f"{self.optimizer.param_groups[0]['lr']:.5f}, "
                                   f'elapsed {time() - t_start:.1f} s of {self.time_limit_s:.0f} s')
            if time_up or time() >= deadline:
                time_up = True
                break
        # report.py parses this line
        self.print_to_log_file(f"[time budget] {'time limit reached' if time_up else 'all epochs done'} after "
                               f'{time() - t_start:.1f} s: {n_iter_total} train iterations in {self.current_epoch} '
                               f'epochs (batch {self.batch_size}); stopping.')
        self.on_train_end()
