"""diffusion_lab: a small, verified PyTorch library for learning diffusion models."""
from .device import get_device
from .gaussians import gaussian_log_prob, kl_normal, kl_std_normal, reparameterize
from .schedules import Schedule, cosine_schedule, linear_schedule, make_schedule
from .forward import posterior_coefficients, predict_x0, q_posterior, q_sample
from .ddpm import ddpm_loss, ddpm_sample, ddpm_step
from .ddim import ddim_invert, ddim_sample, ddim_sigma, ddim_step, ddim_timesteps
from .mixtures import GaussianMixture, ring_mixture

__version__ = "0.1.0"
