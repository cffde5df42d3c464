"""Knowledge distillation: losses, feature layouts, the distillation objective, students from teachers."""

from compress.distill.api import kd_objective as kd_objective
from compress.distill.augment import AugmentedObjective as AugmentedObjective
from compress.distill.augment import TokenAugmentConfig as TokenAugmentConfig
from compress.distill.augment import TokenAugmenter as TokenAugmenter
from compress.distill.augment import augment_data_problem as augment_data_problem
from compress.distill.augment import augmenter_for as augmenter_for
from compress.distill.student import build_student as build_student, student_by_depth as student_by_depth
from compress.distill.config import LossesConfig as LossesConfig
from compress.distill.layouts import (
    FEATURE_LAYOUTS as FEATURE_LAYOUTS,
)
from compress.distill.layouts import (
    AttentionTaps as AttentionTaps,
)
from compress.distill.layouts import (
    FeatureLayout as FeatureLayout,
)
from compress.distill.layouts import (
    LayerTaps as LayerTaps,
)
from compress.distill.layouts import (
    find_layout as find_layout,
)
from compress.distill.losses import kd_loss as kd_loss
from compress.distill.losses import soft_cross_entropy as soft_cross_entropy
from compress.distill.objective import DistillObjective as DistillObjective
