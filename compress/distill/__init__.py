"""Knowledge distillation: losses, objectives, students built from teachers."""

from compress.distill.api import kd_objective as kd_objective, student_by_depth as student_by_depth
from compress.distill.config import LossesConfig as LossesConfig
from compress.distill.losses import kd_loss as kd_loss, soft_cross_entropy as soft_cross_entropy
