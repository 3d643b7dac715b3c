"""Sample-quality metrics: Inception weights (`inception`), torch-fidelity FID/KID/IS
(`fidelity`), cached reference statistics (`reference_stats`). The in-training FID (torchmetrics)
is the callback `ddpm_unet.callbacks.fid.FIDCallback`."""
