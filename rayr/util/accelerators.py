"""Ray's ``ray.util.accelerators``: the accelerator type names ``accelerator_type=`` takes.

A node whose GPUs are of a known type has the resource ``accelerator_type:<type>`` (amount 1);
a task or actor with ``accelerator_type=T`` asks for a sliver of it, so it runs only there.
"""

NVIDIA_TESLA_V100 = "V100"
NVIDIA_TESLA_P100 = "P100"
NVIDIA_TESLA_T4 = "T4"
NVIDIA_TESLA_P4 = "P4"
NVIDIA_TESLA_K80 = "K80"
NVIDIA_TESLA_A10G = "A10G"
NVIDIA_L4 = "L4"
NVIDIA_L40S = "L40S"
NVIDIA_A100 = "A100"
NVIDIA_H100 = "H100"
NVIDIA_H200 = "H200"
NVIDIA_H20 = "H20"
NVIDIA_B200 = "B200"
NVIDIA_A10 = "A10"
NVIDIA_A40 = "A40"
