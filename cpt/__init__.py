"""cpt: prompt tuning of CLIP (CoOp, SoftCPT, SCPNet) with cached frozen features."""

import warnings

# OpenAI's clip imports pkg_resources, whose deprecation warning is noise for cpt's users.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=FutureWarning)

__version__ = "0.1.0"
