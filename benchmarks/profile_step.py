"""Where a training step of the default digits U-Net spends its time on the CPU (torch.profiler).

    python benchmarks/profile_step.py      # unet_small as configured, batch 256, channels_last

Prints the operators by self CPU time over 5 steps (after 3 warm-up steps).
"""

import torch
import torch.nn.functional as F
from model_configs import net_kwargs
from torch.profiler import ProfilerActivity, profile

from ddpm_unet.models.unet import UNet

torch.manual_seed(0)
net = UNet(**net_kwargs("unet_small")).to(memory_format=torch.channels_last)
opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
x = torch.randn(256, 1, 8, 8).to(memory_format=torch.channels_last)
t = torch.randint(0, 1000, (256,))


def step():
    loss = F.mse_loss(net(x, t), torch.randn_like(x))
    opt.zero_grad()
    loss.backward()
    opt.step()


for _ in range(3):
    step()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(5):
        step()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
