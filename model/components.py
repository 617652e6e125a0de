"""The parts of a latent diffusion model, as loaded from any checkpoint format."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import BertTokenizer, CLIPTextModel, CLIPTokenizer

from model.autoencoder import AutoencoderKL
from model.class_embedder import ClassEmbedder
from model.ldm_bert import LDMBert
from model.noise_augmentation import NoiseAugmentation
from model.sampling.schedule import ScheduleConfig
from model.unet import UNet
from model.vq import VQAutoencoder


@dataclass
class Components:
    """UNet, autoencoder, text encoder, tokenizer and the training noise schedule; the x4
    upscaler (a low-res image concatenated to the latent) also has the low-res input's
    augmentation. The text encoder is CLIP's (Stable Diffusion), LDMBert (the paper's LDM-KL-8-G)
    or none (the paper's unconditional and super-resolution models, with a VQ autoencoder); the
    paper's class-conditional ImageNet model has a class embedder instead."""

    unet: UNet
    vae: AutoencoderKL | VQAutoencoder
    text_encoder: CLIPTextModel | LDMBert | None
    tokenizer: CLIPTokenizer | BertTokenizer | None
    schedule: ScheduleConfig
    upscaler: NoiseAugmentation | None = None
    class_embedder: ClassEmbedder | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype) -> Components:
        """Move the networks; the VAE keeps fp32 on fp16 (SD's VAE overflows in fp16)."""
        self.unet.to(device=device, dtype=dtype)
        vae_dtype = torch.float32 if dtype == torch.float16 else dtype
        self.vae.to(device=device, dtype=vae_dtype)
        for encoder in (self.text_encoder, self.class_embedder):
            if encoder is not None:
                encoder.to(device=device, dtype=dtype)
        return self
