"""diffusion_lab: a small, verified PyTorch library for learning diffusion models.

The model contract, stated once: model(x, t, cond=None) -> eps_hat, with x of shape (B, ...),
t integer timesteps of shape (B,) in [0, T-1], and cond integer labels (B,) or None.
"""
from .device import get_device
from .gaussians import gaussian_log_prob, kl_normal, kl_std_normal, reparameterize
from .schedules import Schedule, cosine_schedule, linear_schedule, make_schedule
from .forward import posterior_coefficients, predict_x0, q_posterior, q_sample
from .ddpm import ddpm_loss, ddpm_sample, ddpm_step
from .ddim import ddim_invert, ddim_sample, ddim_sigma, ddim_step, ddim_timesteps
from .mixtures import GaussianMixture, ring_mixture
from .score import (ScoreMLP, annealed_langevin_sample, ddpm_score_model, ddpm_sigmas, dsm_loss, eps_to_score,
                    geometric_sigmas, langevin_sample, log_snr_sigmas, log_snr_timesteps)
from .guidance import cfg, cfg_eps, classifier_grad, classifier_guidance
from .nets import NoisyClassifier, TimeMLP, UNet, make_denoiser, timestep_embedding
from .vae import VAE, vae_loss
from . import data
from .data import (checkerboard, labelled_mixture, load_digits, load_mnist, make_toy, read_idx, swiss_roll, thin_ring,
                   two_moons)
from .metrics import DigitsClassifier, classifier_accuracy, mmd, sliced_wasserstein, train_digits_classifier
from .elbo import ddpm_elbo
from .train import (EMA, TrainConfig, TrainingDivergedError, train_classifier, train_ddpm, train_score_model,
                    train_vae)
from .checkpoints import load_checkpoint, load_pretrained, save_checkpoint
from .notation import (alpha_bar_to_sigma, alpha_bar_to_su, cfg_scale_to_w, cfg_w_to_scale, langevin_delta_to_eta,
                       langevin_eta_to_delta, sigma_to_alpha_bar, su_to_alpha_bar)

from .paths import GaussianPath, LinearPath, SchedulePath, VEPath, VPPath, linear_path, schedule_path, ve_path, vp_path
from .predictions import PREDICTIONS, convert_prediction
from .discrete import discrete_model
from .path_change import change_path
from .ode import ode_sample
from .sde import sde_sample
from .pc import langevin_correct, langevin_step_size, pc_sample
from .likelihood import bits_per_dim, ode_log_likelihood
from .dpm_solver import dpm_solver_sample
from .edm import edm_sample, karras_sigmas
from .grids import SPACINGS, sampling_times
from .ode import ode_solve
from .objectives import edm_preconditioning, eps_loss_weight, path_loss, train_path_model
from .flow import (VelocityMLP, VelocityUNet, flow_matching_loss, make_velocity_net, ot_coupling, reflow_pairs,
                   straightness, train_flow)
from .nets import TokenMLP
from .categorical import (CategoricalSchedule, categorical_posterior, categorical_prior_kl, categorical_q_sample,
                          categorical_schedule, cumulative_transition_matrix, d3pm_kl, transition_matrix)
from .data import load_digit_tokens
from .masked import (MaskedOracle, masked_diffusion_loss, masked_diffusion_nll, masked_diffusion_sample,
                     train_masked_diffusion)
from .distill import progressive_distill
from .consistency import ConsistencyModel, consistency_sample, consistency_times, exact_consistency_function
from .consistency_training import consistency_distill, consistency_train

__version__ = "0.1.0"
