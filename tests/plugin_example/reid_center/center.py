"""Method 'center': the baseline plus Wen et al.'s center loss on the pooled feature, as BoT trains it (weight 5e-4; the
centres by their own SGD at lr 0.5, on the plain center loss's gradient). Registered by importing this module."""
from dataclasses import dataclass

import torch

from reid_nb.baseline import Baseline, BaselineOpts
from reid_nb.engine import AuxParams, register_method
from reid_nb.losses import CenterLoss


@dataclass
class CenterOpts(BaselineOpts):
    center_weight: float = 5e-4     # BoT's weight of the center loss in the total
    center_lr: float = 0.5          # BoT's SGD learning rate of the centres


@register_method("center")
class Center(Baseline):
    "Baseline + center loss: one options field more, one loss term more, the centres on an optimiser of their own."
    opts_cls = CenterOpts

    def build_model(self):
        model = super().build_model()
        model.center = CenterLoss(self.num_classes, model.trunk.out_dim)   # in the model: saved in model.pt, DDP-averaged
        self._center = model.center
        return model

    def losses(self, out, batch):
        return {**super().losses(out, batch), "center": self.opts.center_weight * self._center(out["feat"], batch["pid"])}

    def aux_params(self, model):
        o = self.opts
        return [AuxParams("centers", [self._center.centers], lambda ps: torch.optim.SGD(ps, lr=o.center_lr), grad_scale=1 / o.center_weight)]
