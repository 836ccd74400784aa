"""Self-supervised contrastive learning: MoCo v2 and SimCLR, their losses, and leak-free batch norm."""
from galtools.ssl.batchnorm import SplitBatchNorm2d, convert_split_batchnorm
from galtools.ssl.losses import info_nce, nt_xent
from galtools.ssl.encoder import ContrastiveEncoder, ContrastiveMethod
from galtools.ssl.moco import MoCo
from galtools.ssl.simclr import SimCLR

__all__ = ["ContrastiveEncoder", "ContrastiveMethod", "MoCo", "SimCLR", "SplitBatchNorm2d", "convert_split_batchnorm", "info_nce",
           "nt_xent"]
