"""The one training config schema, shared by the CLI, the WebUI tab and the REST API.

``TrainConfig`` is a flat dataclass (no pydantic: the WebUIs ship pydantic 1 and 2). Each field
carries its documentation in ``field(metadata=...)``: ``doc``, ``choices``, ``group``
("common", "image" or "text") and numeric bounds; the README's config reference is generated
from it (``config_doc.py``).

Rules, decided once here:

- Unknown keys are rejected with the nearest valid name. kohya sd-scripts names that mean the
  same thing (``network_dim``, ``train_batch_size``, ...) are accepted as aliases; giving an alias
  and its canonical name in the same source is a conflict and is rejected.
- ``max_train_steps``, when set, is the length of the run and ``epochs`` is ignored (as in
  diffusers' scripts); ``config_warnings`` says so.
- Keys of the other task (text keys under ``text-to-image`` and image keys under
  ``text-generation``) are accepted and ignored; ``config_warnings`` lists those changed from their
  defaults, so no setting silently does nothing.
- Numbers written as strings (PyYAML reads ``1e-4`` as a string) are accepted when they parse.
- Relative paths are kept as written, i.e. relative to the working directory, as in kohya.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import UserError, yaml_problem

TASKS = ("text-to-image", "text-generation")
# Other spellings of a choice: the lora-scripts articles call the image task "image-generation".
CHOICE_ALIASES: dict[str, dict[str, str]] = {"task_type": {"image-generation": "text-to-image"}}

DEFAULT_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
DEFAULT_TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
DEFAULT_LLM_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _f(default: Any, doc: str, *, group: str = "common", choices: tuple | None = None, minimum: float | None = None,
       maximum: float | None = None, commas: bool = False, task_docs: dict[str, str] | None = None) -> Any:
    """A dataclass field with its documentation and validation rules attached.

    ``task_docs`` maps a task type to the help text shown for that task when it differs from ``doc``
    (which is written for both tasks, as in the README).
    """
    meta = {"doc": doc, "group": group, "choices": choices, "min": minimum, "max": maximum, "commas": commas,
            "task_docs": dict(task_docs or {})}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every setting of a training run. Field docs live in the metadata (see ``schema()``)."""

    # --- seed keys ---
    train_data_dir: str | None = _f(
        None, "Training data: a folder of images (text-to-image; `N_name` subfolders repeat N times) or a "
        ".txt/.jsonl file or folder (text-generation).")
    metadata_path: str | None = _f(
        None, "Captions CSV (`filename,prompt` or `file_name,text`). Default: `metadata.csv` in train_data_dir "
        "when present, else `.txt`/`.caption` sidecar files.", group="image")
    base_model: str | None = _f(
        None, "Base model: WebUI checkpoint (.safetensors/.ckpt) or diffusers folder for images; .gguf, legacy "
        "GGML .bin or HF folder for text.")
    task_type: str = _f("text-to-image", "What to train: an image LoRA (`text-to-image`; `image-generation`, the "
                        "lora-scripts name, is accepted) or a text LoRA (`text-generation`).", choices=TASKS)
    lora_rank: int = _f(16, "LoRA rank (kohya `network_dim`).", minimum=1,
                        task_docs={"text-generation": "LoRA rank: the inner size of each adapter pair (LLaMA-Factory "
                                                      "`lora_rank`)."})
    lora_alpha: float = _f(8.0, "LoRA alpha (kohya `network_alpha`); the update is scaled by alpha/rank.", minimum=0,
                           task_docs={"text-generation": "LoRA alpha; the update is scaled by alpha/rank "
                                                         "(LLaMA-Factory `lora_alpha`)."})
    unet_target_modules: list[str] = _f(
        DEFAULT_UNET_TARGETS, "UNet module names (diffusers naming) that get LoRA layers: kohya's default set of "
        "attention, proj_in/out and feed-forward. A comma-separated string is accepted.", group="image", commas=True)
    batch_size: int = _f(1, "Images or text samples per step (kohya `train_batch_size`).", minimum=1,
                         task_docs={"text-to-image": "Images per step (kohya `train_batch_size`).",
                                    "text-generation": "Text samples (sequences of max_length tokens) per step."})
    epochs: int = _f(10, "Passes over the data (kohya `max_train_epochs`); ignored when max_train_steps is set.",
                     minimum=1, task_docs={"text-generation": "Passes over the text samples; ignored when max train "
                                                              "steps is set."})
    learning_rate: float = _f(1e-4, "Learning rate of the LoRA weights (kohya `unet_lr`).", minimum=0,
                              task_docs={"text-generation": "Learning rate of the adapter weights (LLaMA-Factory "
                                                            "`learning_rate`)."})
    output_dir: str = _f("output", "Folder for the LoRA files, training state, samples and logs.",
                         task_docs={"text-generation": "Folder for the GGUF adapter, the PEFT folder, the training "
                                                       "state and logs."})
    save_steps: int = _f(0, "Also save the LoRA every N optimizer steps (0: off): `name-000100.safetensors` for "
                         "images, `name-000100.gguf` for text.", minimum=0,
                         task_docs={"text-to-image": "Also save `name-000100.safetensors` every N optimizer steps "
                                                     "(0: off).",
                                    "text-generation": "Also save the GGUF adapter `name-000100.gguf` (and the "
                                                       "training state) every N optimizer steps (0: off)."})

    # --- common run settings ---
    output_name: str = _f("my_lora", "File name of the LoRA without extension; `<lora:output_name:0.7>` in the "
                          "WebUI (images) or `output_name.gguf` plus a PEFT folder (text). No path parts.",
                          task_docs={"text-to-image": "File name of the LoRA without extension; "
                                                      "`<lora:output_name:0.7>` in the WebUI. No path parts.",
                                     "text-generation": "Name of the outputs: the GGUF adapter `output_name.gguf` "
                                                        "for llama.cpp and the PEFT folder `output_name/`. No path "
                                                        "parts."})
    overwrite: bool = _f(False, "Replace existing finished files of the same output_name (the LoRA in output_dir "
                         "and in the WebUI's Lora folder). Off: Start refuses and names the file.",
                         task_docs={"text-generation": "Replace an existing `output_name.gguf` and PEFT folder "
                                                       "`output_name/` in output_dir. Off: Start refuses and names "
                                                       "the file."})
    seed: int = _f(42, "Random seed for initialisation, noise and data order.", minimum=0,
                   task_docs={"text-generation": "Random seed for the adapter's initialisation, dropout and data "
                                                 "order."})
    mixed_precision: str = _f("no", "Mixed precision of the forward pass (fp16/bf16 need a GPU that supports them).",
                              choices=("no", "fp16", "bf16"))
    gradient_checkpointing: bool | str = _f(
        "auto", "Recompute activations in the backward pass to save memory: true, false or auto. auto: text runs "
        "turn it on when the estimated peak without it would pass the available RAM or VRAM (on the CPU also when "
        "the run's own tensors would pass 1.5 GiB above the base's size) and say so in the log; image runs keep "
        "it off.",
        task_docs={"text-to-image": "Recompute activations in the backward pass to save memory (auto: off for "
                                    "image runs).",
                   "text-generation": "Recompute activations in the backward pass to save memory. auto: on when "
                                      "the estimated peak without it would pass the available memory (on the CPU "
                                      "also when the run's own tensors would pass 1.5 GiB above the base's size); "
                                      "the log says which and why."})
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.", minimum=1)
    max_train_steps: int | None = _f(None, "Optimizer steps to train; when set, epochs is ignored.", minimum=1)
    optimizer: str = _f("adamw", "Optimizer; adamw8bit needs bitsandbytes, prodigy needs prodigyopt "
                        "(use learning_rate 1.0 with prodigy).", choices=("adamw", "adamw8bit", "prodigy", "adafactor"))
    weight_decay: float = _f(0.01, "Weight decay of the optimizer.", minimum=0)
    adam_beta1: float = _f(0.9, "Adam beta1 (adamw, adamw8bit, prodigy).", minimum=0, maximum=1)
    adam_beta2: float = _f(0.999, "Adam beta2 (adamw, adamw8bit, prodigy).", minimum=0, maximum=1)
    adam_epsilon: float = _f(1e-8, "Adam epsilon.", minimum=0)
    optimizer_args: dict[str, Any] = _f({}, "Extra keyword arguments for the optimizer, e.g. `{d_coef: 0.5}` for "
                                        "prodigy.")
    max_grad_norm: float = _f(1.0, "Clip the gradient norm to this value (0: no clipping).", minimum=0)
    lr_scheduler: str = _f("constant", "Learning-rate schedule after warmup.",
                           choices=("constant", "linear", "cosine", "cosine_with_restarts", "polynomial"))
    lr_warmup_steps: int = _f(0, "Steps of linear warmup from 0 to learning_rate.", minimum=0)
    lr_scheduler_num_cycles: int = _f(1, "Restarts of cosine_with_restarts.", minimum=1)
    lr_scheduler_power: float = _f(1.0, "Power of the polynomial schedule.", minimum=0)
    lora_dropout: float = _f(0.0, "Dropout inside the LoRA layers.", minimum=0, maximum=1)
    save_every_n_epochs: int = _f(0, "Also save `name-000100.safetensors` (step number) every N epochs (0: off). "
                                  "Image runs only.", minimum=0,
                                  task_docs={"text-to-image": "Also save `name-000100.safetensors` (step number) "
                                                              "every N epochs (0: off).",
                                             "text-generation": "Not used by text runs (use save_steps)."})
    save_last_n: int = _f(0, "Keep only the newest N intermediate saves (0: keep all). The final file is always "
                          "kept. Image runs only.", minimum=0,
                          task_docs={"text-to-image": "Keep only the newest N intermediate saves (0: keep all). "
                                                      "The final file is always kept.",
                                     "text-generation": "Not used by text runs: every `name-000100.gguf` is kept."})
    save_precision: str = _f("fp16", "Precision of the saved LoRA weights (text: of the PEFT folder; the GGUF "
                             "adapter uses gguf_adapter_dtype).", choices=("fp16", "bf16", "fp32"),
                             task_docs={"text-to-image": "Precision of the saved LoRA weights.",
                                        "text-generation": "Precision of the PEFT folder's weights; the GGUF "
                                                           "adapter uses gguf_adapter_dtype."})
    resume: str | None = _f(None, "Resume from a training-state folder, `auto` (newest state in output_dir, or "
                            "start fresh if none) or none. Restores optimizer, schedule and data order; to start "
                            "a new run from an existing LoRA use init_lora.")
    init_lora: str | None = _f(
        None, "Start the LoRA from an existing adapter (kohya `network_weights`): a kohya .safetensors (e.g. from "
        "the WebUI's Lora folder), a diffusers file or a PEFT folder; for text also a GGUF adapter. Its modules, "
        "ranks and alphas come from the file; lora_rank, lora_alpha and the target lists left at their defaults "
        "follow it, other values must agree with it. Target modules the file lacks start fresh. Unlike resume, "
        "the optimizer, schedule and step count start anew.",
        task_docs={"text-to-image": "Start the LoRA from an existing adapter (kohya `network_weights`): a kohya "
                                    ".safetensors (e.g. from the WebUI's Lora folder), a diffusers file or a PEFT "
                                    "folder. Its modules, ranks and alphas come from the file; lora_rank, lora_alpha "
                                    "and the target lists left at their defaults follow it, other values must agree "
                                    "with it. Target modules the file lacks start fresh. Unlike resume, the "
                                    "optimizer, schedule and step count start anew.",
                   "text-generation": "Start the LoRA from an existing text adapter: a GGUF adapter (llama.cpp "
                                      "--lora) or a PEFT folder, checked against the base. Its modules, ranks and "
                                      "alphas come from the file; lora_rank, lora_alpha and lora_target_modules left "
                                      "at their defaults follow it, other values must agree with it. Target modules "
                                      "the file lacks start fresh. Unlike resume, the optimizer, schedule and step "
                                      "count start anew."})
    logging_dir: str | None = _f(None, "TensorBoard folder. Default: `output_dir/logs`.")

    # --- image: model ---
    model_arch: str = _f("auto", "Base model family; auto detects it from the checkpoint keys (Flux.1: dev or "
                         "schnell from the guidance embedding).", group="image",
                         choices=("auto", "sd1", "sd2", "sdxl", "flux"))
    prediction_type: str = _f("auto", "Noise prediction target; auto: v_prediction for SD2 768-v checkpoints "
                              "(detected), else epsilon.", group="image", choices=("auto", "epsilon", "v_prediction"))
    resolution: int = _f(512, "Training resolution (side of the square bucket area); 512 for SD1, 768 for SD2-v, "
                         "1024 for SDXL.", group="image", minimum=64)
    tokenizer_path: str | None = _f(
        None, "Folder with the CLIP tokenizer (or tokenizer/ and tokenizer_2/ for SDXL) when the base model has "
        "none and the local HF cache has no copy.", group="image")
    clip_skip: int = _f(1, "Use the output of the N-th last CLIP layer (2 for many anime models).", group="image",
                        minimum=1, maximum=12)
    train_text_encoder: bool = _f(False, "Also train LoRA layers on the text encoder(s).", group="image")
    text_encoder_lr: float | None = _f(None, "Learning rate of the text-encoder LoRA. Default: learning_rate.",
                                       group="image", minimum=0)
    text_encoder_target_modules: list[str] = _f(
        DEFAULT_TEXT_ENCODER_TARGETS, "Text-encoder module names that get LoRA layers (CLIP attention and MLP).",
        group="image", commas=True)
    conv_rank: int = _f(0, "Rank of LoRA on 3x3 convolutions (LoCon; kohya `conv_dim`); 0: off.", group="image",
                        minimum=0)
    conv_alpha: float | None = _f(None, "Alpha of the conv LoRA. Default: conv_rank.", group="image", minimum=0)
    min_snr_gamma: float | None = _f(None, "Min-SNR loss weighting gamma (5 is common); empty: off.", group="image",
                                     minimum=0)
    noise_offset: float = _f(0.0, "Noise offset (0.05-0.1 helps very dark/bright images).", group="image", minimum=0)
    cache_latents: bool = _f(True, "Encode each image with the VAE once (used when the augmentations allow).",
                             group="image")
    cache_text_encoder_outputs: bool = _f(
        True, "Encode each caption once (used only when the text encoder is frozen and captions do not change: no "
        "shuffle or dropout).", group="image")
    frozen_weight_dtype: str = _f(
        "auto", "Precision the frozen UNet weights are kept in when the run computes in float32 (CPU, or "
        "mixed_precision `no`): they are upcast layer by layer, so the math stays float32 (Forge's "
        "`--unet-in-fp16`). `auto` keeps the checkpoint's own precision (fp16 for the usual fp16 files: half the "
        "UNet's memory, same values); `fp32` upcasts the whole UNet; `fp16`/`bf16` force that storage (bf16 "
        "rounds fp16 weights).", group="image", choices=("auto", "fp32", "fp16", "bf16"))
    frozen_compute_dtype: str = _f(
        "fp32", "Math of the frozen UNet's linear and convolution layers on a float32 run. `bf16` keeps those "
        "weights in bf16 and multiplies in bf16 (float32 sums; layer inputs rounded to bf16): 3-10x faster "
        "matmuls on CPUs with AVX512-BF16/AMX and bf16 weights, but no longer the float32 result (like GPU bf16 "
        "mixed precision; LoRA weights, gradients and optimizer stay float32). Overrides frozen_weight_dtype.",
        group="image", choices=("fp32", "bf16"))
    inplace_lora_add: bool = _f(
        True, "LoRA layers add their update into the frozen layer's output in place instead of PEFT's three "
        "output-size temporaries per layer: the same math, and on the CPU a smaller, less fragmented heap (SD1.5 "
        "at 512 px: 0.8 GiB lower peak). Used where it is exactly PEFT's plain LoRA (not under autocast).",
        group="image")
    release_encoders: bool = _f(
        True, "When latents and captions are cached (single-file base), encode them all first, free the VAE and "
        "text encoders, and only then load the UNet; sample images load them again while they render.",
        group="image")

    # --- image: Flux.1 (kohya sd-scripts' flux_train_network.py names) ---
    clip_l: str | None = _f(None, "Flux.1: the CLIP-L text encoder file (.safetensors, Forge's models/text_encoder). "
                            "Not needed when base_model is an all-in-one checkpoint.", group="image")
    t5xxl: str | None = _f(None, "Flux.1: the T5-XXL text encoder file (.safetensors, fp16 or fp8). Not needed "
                           "when base_model is an all-in-one checkpoint.", group="image")
    ae: str | None = _f(None, "Flux.1: the VAE file (ae.safetensors, Forge's models/VAE). Not needed when "
                        "base_model is an all-in-one checkpoint.", group="image")
    guidance_scale: float = _f(1.0, "Flux.1 dev: the guidance embedding's value during training (sd-scripts' "
                               "default 1.0). schnell has no guidance embedding and ignores it.", group="image",
                               minimum=0)
    timestep_sampling: str = _f(
        "sigma", "Flux.1: how training timesteps are drawn (sd-scripts' meanings): sigma (the shifted scheduler's "
        "sigmas), uniform, sigmoid (sigmoid of a normal draw times sigmoid_scale), shift (sigmoid, then "
        "discrete_flow_shift), flux_shift (sigmoid, then the resolution-dependent shift of Flux.1 dev).",
        group="image", choices=("sigma", "uniform", "sigmoid", "shift", "flux_shift"))
    discrete_flow_shift: float = _f(3.0, "Flux.1: the flow-matching shift of the sigma and shift samplings.",
                                    group="image", minimum=0)
    sigmoid_scale: float = _f(1.0, "Flux.1: scale of the normal draw in the sigmoid, shift and flux_shift "
                              "samplings.", group="image", minimum=0)
    model_prediction_type: str = _f(
        "raw", "Flux.1: how the transformer's output is read (sd-scripts): raw, additive (plus the noisy input) or "
        "sigma_scaled (times -sigma plus the noisy input).", group="image",
        choices=("raw", "additive", "sigma_scaled"))
    t5xxl_max_token_length: int | None = _f(None, "Flux.1: T5 tokens per caption. Default: 512 for dev, 256 for "
                                            "schnell (as sd-scripts).", group="image", minimum=1)
    blocks_to_swap: int = _f(0, "Flux.1: transformer blocks kept on the CPU and moved to the GPU when they run "
                             "(sd-scripts' lever for 12-16 GB GPUs); 0: off. A no-op on a CPU run.", group="image",
                             minimum=0)
    fp8_base: bool = _f(False, "Flux.1: keep the frozen transformer's weights in float8 (e4m3fn), upcast layer by "
                        "layer; half the memory of bf16. GGUF bases stay packed in their own types.", group="image")

    # --- image: samples ---
    sample_every_n_steps: int = _f(0, "Render sample images every N steps (0: off).", group="image", minimum=0)
    sample_prompts: list[str] = _f([], "Prompts for samples; `<lora:name:w>` sets the LoRA weight.", group="image")
    sample_negative_prompt: str = _f("", "Negative prompt for samples.", group="image")
    sample_steps: int = _f(20, "Denoising steps per sample.", group="image", minimum=1)
    sample_guidance_scale: float = _f(7.0, "Classifier-free guidance scale of samples.", group="image", minimum=0)
    sample_seed: int | None = _f(None, "Seed of samples. Default: seed.", group="image", minimum=0)

    # --- image: dataset ---
    caption_extension: str = _f(".txt", "Extension of caption sidecar files (`.caption` is also read).",
                                group="image")
    shuffle_caption: bool = _f(False, "Shuffle comma-separated tags each epoch.", group="image")
    keep_tokens: int = _f(0, "Keep the first N tags in place when shuffling or dropping tags.", group="image",
                          minimum=0)
    caption_dropout_rate: float = _f(0.0, "Probability of training an image with an empty caption.", group="image",
                                     minimum=0, maximum=1)
    tag_dropout_rate: float = _f(0.0, "Probability of dropping each tag (kohya `caption_tag_dropout_rate`).",
                                 group="image", minimum=0, maximum=1)
    trigger_word: str = _f("", "Word put first in every caption; shuffle and tag dropout keep it, caption dropout "
                           "empties it too.", group="image")
    flip_aug: bool = _f(False, "Randomly flip images horizontally.", group="image")
    random_crop: bool = _f(False, "Random instead of center crop to the bucket (disables latent caching).",
                           group="image")
    enable_bucket: bool = _f(True, "Aspect-ratio bucketing (never upscales); off: every image is cropped to a "
                             "square of resolution.", group="image")
    min_bucket_reso: int | None = _f(None, "Smallest bucket side. Default: half the resolution (256 at 512, as "
                                     "kohya), a multiple of bucket_reso_steps and at most the resolution.",
                                     group="image", minimum=8)
    max_bucket_reso: int | None = _f(None, "Largest bucket side. Default: twice the resolution (1024 at 512, as "
                                     "kohya).", group="image", minimum=8)
    bucket_reso_steps: int = _f(64, "Bucket sides are multiples of this.", group="image", minimum=8)
    num_repeats: int = _f(1, "Repeats of images in folders without an `N_` prefix.", group="image", minimum=1)
    bad_data: str = _f("fail", "What to do with unreadable images, missing captions or CSV rows naming missing "
                       "files: fail (stop with a report) or skip (train without them, with a report). Image runs "
                       "only.", choices=("fail", "skip"),
                       task_docs={"text-to-image": "What to do with unreadable images, missing captions or CSV rows "
                                                   "naming missing files: fail (stop with a report) or skip (train "
                                                   "without them, with a report).",
                                  "text-generation": "Not used by text runs: a bad data row stops the run with its "
                                                     "line number."})
    max_image_pixels: int = _f(50_000_000, "Images with more pixels are reported as absurdly large.",
                               group="image", minimum=1)

    # --- text generation ---
    lora_target_modules: list[str] = _f(
        DEFAULT_LLM_TARGETS, "Language-model module names (HF naming) that get LoRA layers.", group="text",
        commas=True)
    max_length: int = _f(512, "Maximum tokens per sample; longer samples are truncated.", group="text", minimum=8)
    data_format: str = _f("auto", "Text data format: plain text, jsonl instruction/input/output or jsonl "
                          "`messages`; auto decides from the file.", group="text",
                          choices=("auto", "text", "instruction", "chat"))
    train_on_responses_only: bool = _f(True, "Instruction and chat data: loss on the responses only.", group="text")
    chat_template: str | None = _f(None, "Jinja chat template. Default: the GGUF's `tokenizer.chat_template`, "
                                   "else a documented default.", group="text")
    ggml_n_kv_heads: int | None = _f(None, "Legacy GGML bases: KV heads (not stored in GGML; LLaMA-2 70B: 8). "
                                     "Default: same as heads.", group="text", minimum=1)
    ggml_rms_eps: float | None = _f(None, "Legacy GGML bases: RMS norm epsilon (LLaMA-1: 1e-6, LLaMA-2: 1e-5).",
                                    group="text", minimum=0)
    ggml_context_length: int | None = _f(None, "Legacy GGML bases: training context length (LLaMA-2: 4096).",
                                         group="text", minimum=1)
    ggml_rope_base: float | None = _f(None, "Legacy GGML bases: rope frequency base (default 10000).",
                                      group="text", minimum=0)
    ggml_copy_beside_base: bool = _f(True, "Legacy GGML bases: keep the GGUF copy llama.cpp needs beside the base "
                                     "when that folder is writable (else in the run folder). The tab and REST "
                                     "turn it off when the base's folder is not one LoRA Bridge writes to.",
                                     group="text")
    llama_cpp_check: str = _f("auto", "Compare llama.cpp logits with base + adapter against torch after training: "
                              "auto (when llama-cpp-python is installed), on (fail if missing), off.",
                              group="text", choices=("auto", "on", "off"))
    llama_cpp_tolerance: float = _f(1e-3, "Largest allowed max |delta logit| in the llama.cpp check.", group="text",
                                    minimum=0)
    gguf_adapter_dtype: str = _f("f32", "Tensor type of the exported GGUF adapter.", group="text",
                                 choices=("f32", "f16", "bf16"))


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrainConfig)}
_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)

# kohya sd-scripts / diffusers script names accepted for our keys.
ALIASES: dict[str, str] = {
    "network_dim": "lora_rank",
    "network_alpha": "lora_alpha",
    "network_dropout": "lora_dropout",
    "train_batch_size": "batch_size",
    "max_train_epochs": "epochs",
    "num_train_epochs": "epochs",
    "unet_lr": "learning_rate",
    "conv_dim": "conv_rank",
    "caption_tag_dropout_rate": "tag_dropout_rate",
    "pretrained_model_name_or_path": "base_model",
    "save_every_n_steps": "save_steps",
    "network_weights": "init_lora",
}

_NAME_BAD = re.compile(r'[\x00-\x1f\x7f<>:"|?*]')


@dataclass(frozen=True)
class FieldSpec:
    """One key of the schema, for documentation and UIs."""

    name: str
    type_name: str
    default: Any
    doc: str
    choices: tuple | None
    group: str
    minimum: float | None
    maximum: float | None


def _type_name(tp: Any) -> str:
    """Short readable name of a field type: ``int``, ``float?``, ``list[str]``."""
    args = typing.get_args(tp)
    if type(None) in args:
        inner = [a for a in args if a is not type(None)][0]
        return _type_name(inner) + "?"
    if typing.get_origin(tp) is list:
        return "list[str]"
    if typing.get_origin(tp) is dict:
        return "mapping"
    if tp == bool | str:
        return "bool or auto"
    return getattr(tp, "__name__", str(tp))


def field_doc(name: str, task_type: str | None = None) -> str:
    """The help text of key ``name``; with ``task_type``, the text written for that task when there is one."""
    meta = FIELDS[name].metadata
    return meta["task_docs"].get(canonical_task(task_type), meta["doc"]) if task_type else meta["doc"]


def canonical_task(task_type: str | None) -> str | None:
    """``task_type`` with aliases resolved (``image-generation`` -> ``text-to-image``)."""
    if task_type is None:
        return None
    return CHOICE_ALIASES["task_type"].get(str(task_type).strip().lower(), task_type)


def schema(task_type: str | None = None) -> list[FieldSpec]:
    """All keys in declaration order with type, default and documentation.

    With ``task_type`` the documentation is the one written for that task (e.g. text runs save
    ``.gguf`` files); without it, the text that covers both (the README's).
    """
    specs = []
    default_cfg = TrainConfig()
    for name, f in FIELDS.items():
        m = f.metadata
        specs.append(FieldSpec(name, _type_name(_TYPES[name]), getattr(default_cfg, name), field_doc(name, task_type),
                               m["choices"], m["group"], m["min"], m["max"]))
    return specs


def fields_for_task(task_type: str) -> list[str]:
    """Names of the keys that matter for ``task_type`` (common keys plus that task's group)."""
    own = "image" if canonical_task(task_type) == "text-to-image" else "text"
    return [name for name, f in FIELDS.items() if f.metadata["group"] in ("common", own)]


def _suggest(key: str) -> str:
    """`` ; did you mean 'x'?`` for the nearest valid key, or an empty string."""
    names = list(FIELDS) + list(ALIASES)
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if not close:
        close = [n for n in names if key.lower() in n or n in key.lower()][:1]
    if not close:
        return "; see the config reference in README.md"
    target = ALIASES.get(close[0], close[0])
    return f"; did you mean '{target}'?"


def _coerce(source: str, name: str, value: Any) -> Any:
    """Check and convert one value to its field's type; raise UserError naming source and key."""
    tp = _TYPES[name]
    meta = FIELDS[name].metadata
    args = typing.get_args(tp)
    optional = type(None) in args
    if optional:
        tp = [a for a in args if a is not type(None)][0]
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        if optional:
            return None
        raise UserError(f"{source}: '{name}' must not be empty; default is {getattr(TrainConfig(), name)!r}")

    def bad(expected: str) -> UserError:
        return UserError(f"{source}: '{name}' must be {expected}, got {value!r}")

    if tp is bool or tp == bool | str:  # bool | str: true, false or "auto" (gradient_checkpointing)
        if isinstance(value, bool):
            out = value
        elif isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            out = value.strip().lower() in ("true", "yes", "on", "1")
        elif isinstance(value, int) and value in (0, 1):
            out = bool(value)
        elif tp is not bool and isinstance(value, str) and value.strip().lower() == "auto":
            out = "auto"
        else:
            raise bad("true or false" if tp is bool else "true, false or auto")
    elif tp is int:
        if isinstance(value, bool):
            raise bad("an integer")
        if isinstance(value, int):
            out = value
        elif isinstance(value, float) and value.is_integer():
            out = int(value)
        elif isinstance(value, str):
            try:
                num = float(value.strip().replace("_", ""))
            except ValueError:
                raise bad("an integer") from None
            if not num.is_integer():
                raise bad("an integer")
            out = int(num)
        else:
            raise bad("an integer")
    elif tp is float:
        if isinstance(value, bool):
            raise bad("a number")
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value.strip())
            except ValueError:
                raise bad("a number") from None
        else:
            raise bad("a number")
        if not math.isfinite(out):
            raise bad("a finite number")
    elif tp is str:
        if isinstance(value, (os.PathLike,)):
            value = os.fspath(value)
        if isinstance(value, bool) and meta["choices"] and {"on", "off"} <= set(meta["choices"]):
            value = "on" if value else "off"  # YAML 1.1 reads a bare on/off as a boolean
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise bad("a string")
        out = str(value)
    elif typing.get_origin(tp) is list:
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",")] if meta["commas"] else [value]
            items = [v for v in items if v]
        elif isinstance(value, (list, tuple)):
            items = list(value)
        else:
            raise bad("a list of strings")
        if not all(isinstance(v, str) for v in items):
            raise bad("a list of strings")
        out = items
    elif typing.get_origin(tp) is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad("a mapping of names to values, e.g. {d_coef: 0.5}")
        out = dict(value)
    else:  # pragma: no cover - schema declares only the types above
        raise AssertionError(tp)

    choices = meta["choices"]
    if choices is not None:
        norm = out.strip().lower().replace("-", "_") if isinstance(out, str) else out
        lookup = {c.replace("-", "_"): c for c in choices}
        lookup.update({a.replace("-", "_"): c for a, c in CHOICE_ALIASES.get(name, {}).items()})
        if norm not in lookup:
            raise UserError(f"{source}: '{name}' must be one of {', '.join(choices)}, got {value!r}")
        out = lookup[norm]
    if isinstance(out, (int, float)) and not isinstance(out, bool):
        if meta["min"] is not None and out < meta["min"]:
            raise UserError(f"{source}: '{name}' must be at least {meta['min']:g}, got {value!r}")
        if meta["max"] is not None and out > meta["max"]:
            raise UserError(f"{source}: '{name}' must be at most {meta['max']:g}, got {value!r}")
    return out


def check_output_name(name: str, source: str = "config") -> str:
    """Validate ``output_name``: a plain file name, no path parts or control characters.

    A trailing ``.safetensors`` is dropped (people type the file name); anything that would place
    the file elsewhere is rejected rather than rewritten.
    """
    if name.lower().endswith(".safetensors"):
        name = name[: -len(".safetensors")]
    if not name.strip():
        raise UserError(f"{source}: 'output_name' is empty; set a file name such as my_lora")
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith("."):
        raise UserError(f"{source}: 'output_name' {name!r} contains path parts; use a plain name such as my_lora "
                        "and put the folder in output_dir")
    if _NAME_BAD.search(name):
        raise UserError(f"{source}: 'output_name' {name!r} contains control or reserved characters "
                        '(<>:"|?*); use letters, digits, - and _')
    if name != name.strip():
        raise UserError(f"{source}: 'output_name' {name!r} starts or ends with spaces; remove them")
    return name


def bucket_bounds(cfg: TrainConfig) -> tuple[int, int]:
    """(min, max) bucket side: the values set, else derived from the resolution as kohya's defaults scale.

    kohya's defaults are 256 and 1024 for its 512 default, i.e. half and twice the resolution; the
    derived minimum is floored to ``bucket_reso_steps`` and never exceeds the resolution, so any
    resolution the user sets has its square bucket.
    """
    steps, resolution = int(cfg.bucket_reso_steps), int(cfg.resolution)
    low = cfg.min_bucket_reso
    if low is None:
        low = min(resolution, max(steps, resolution // 2 // steps * steps))
    high = cfg.max_bucket_reso if cfg.max_bucket_reso is not None else max(2 * resolution, int(low))
    return int(low), int(high)


def _check_cross(cfg: TrainConfig, source: str) -> None:
    """Rules between keys that make a config impossible."""
    low, high = bucket_bounds(cfg)
    if low > high:
        raise UserError(f"{source}: min_bucket_reso {low} is larger than max_bucket_reso {high}; swap or fix them")
    for key in ("resolution", "min_bucket_reso", "max_bucket_reso"):
        if getattr(cfg, key) is not None and getattr(cfg, key) % 8:
            raise UserError(f"{source}: '{key}' {getattr(cfg, key)} must be a multiple of 8 (the VAE downsamples by 8)")
    if cfg.task_type == "text-to-image" and cfg.enable_bucket and cfg.resolution < low:
        raise UserError(f"{source}: resolution {cfg.resolution} is below min_bucket_reso {low}; "
                        "lower min_bucket_reso or leave it empty (derived from the resolution)")


def config_from_dict(data: dict[str, Any], source: str = "config") -> TrainConfig:
    """Build a validated ``TrainConfig`` from a mapping (YAML, UI state, API body).

    ``source`` names the file or request in error messages.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of keys to values at the top level, got {type(data).__name__}")
    values: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for raw_key, value in data.items():
        key = str(raw_key).strip()
        name = ALIASES.get(key, key)
        if name not in FIELDS:
            raise UserError(f"{source}: unknown key '{key}'{_suggest(key)}")
        if name in given_as:
            raise UserError(f"{source}: '{key}' and '{given_as[name]}' both set {name}; keep one of them")
        given_as[name] = key
        values[name] = _coerce(source, name, value)
    if "task_type" in values and values["task_type"] not in TASKS:  # pragma: no cover - choices guard this
        raise UserError(f"{source}: unknown task_type")
    if "output_name" in values:
        values["output_name"] = check_output_name(values["output_name"], source)
    cfg = TrainConfig(**values)
    _check_cross(cfg, source)
    return cfg


def as_config(config: TrainConfig | dict[str, Any], source: str = "config") -> TrainConfig:
    """``config`` as a validated ``TrainConfig``: a mapping goes through ``config_from_dict``, a config passes.

    The engines' single entry: they read attributes, so every default comes from this schema.
    """
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict) or config is None:
        return config_from_dict(config, source)
    raise UserError(f"{source}: expected a TrainConfig or a mapping of keys to values, got {type(config).__name__}")


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """All keys with their values, in schema order (lists copied)."""
    return {name: (type(v)(v) if isinstance(v := getattr(cfg, name), (list, dict)) else v) for name in FIELDS}


def dump_config_yaml(cfg: TrainConfig, only_task: bool = False) -> str:
    """The config as YAML that ``load_config`` reads back to an equal config.

    ``only_task`` leaves out the keys of the other task (for UI export).
    """
    import yaml

    data = config_to_dict(cfg)
    if only_task:
        keep = set(fields_for_task(cfg.task_type))
        data = {k: v for k, v in data.items() if k in keep}
    header = "# LoRA Bridge training config (keys: see the config reference in README.md)\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def parse_override(item: str, source: str = "--set") -> tuple[str, Any]:
    """Split ``key=value`` and parse the value with YAML typing (``1e-4`` and ``[a, b]`` work)."""
    import yaml

    if "=" not in item:
        raise UserError(f"{source}: '{item}' is not KEY=VALUE; write e.g. --set lora_rank=8")
    key, text = item.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        value = text
    if isinstance(value, dict) and not text.strip().startswith("{"):
        value = text  # "a: b" inside a prompt is text, not a mapping
    return key, value


def apply_overrides(cfg: TrainConfig, overrides: typing.Iterable[str], source: str = "--set") -> TrainConfig:
    """A new config with ``key=value`` overrides applied (aliases allowed, later wins)."""
    data = config_to_dict(cfg)
    for item in overrides:
        key, value = parse_override(item, source)
        name = ALIASES.get(key, key)
        if name not in FIELDS:
            raise UserError(f"{source} {item}: unknown key '{key}'{_suggest(key)}")
        data[name] = value
    return config_from_dict(data, source)


def load_config(path: str | os.PathLike, overrides: typing.Iterable[str] = ()) -> TrainConfig:
    """Read a YAML config file, validate it and apply ``--set`` overrides."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{p}: config file not found; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = f"{exc.reason} at byte {exc.start}" if isinstance(exc, UnicodeDecodeError) else exc.strerror
        raise UserError(f"{p}: cannot read the config ({reason}); pass a UTF-8 YAML file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{p}: YAML error at {yaml_problem(exc)}; fix the file") from None
    cfg = config_from_dict(data or {}, source=str(p))
    overrides = list(overrides)
    return apply_overrides(cfg, overrides) if overrides else cfg


def config_warnings(cfg: TrainConfig) -> list[str]:
    """Settings that are valid but will not do what they seem to; front ends show these lines."""
    out = []
    defaults = TrainConfig()
    other = "text" if cfg.task_type == "text-to-image" else "image"
    ignored = [n for n, f in FIELDS.items() if f.metadata["group"] == other and getattr(cfg, n) != getattr(defaults, n)]
    if ignored:
        out.append(f"ignored for task_type {cfg.task_type}: {', '.join(ignored)}")
    if cfg.max_train_steps is not None and cfg.epochs != defaults.epochs:
        out.append(f"max_train_steps={cfg.max_train_steps} sets the run length; epochs={cfg.epochs} is ignored")
    if cfg.task_type == "text-to-image":
        if cfg.text_encoder_lr is not None and not cfg.train_text_encoder:
            out.append("text_encoder_lr is set but train_text_encoder is false; the text encoder is not trained")
        if cfg.conv_alpha is not None and cfg.conv_rank == 0:
            out.append("conv_alpha is set but conv_rank is 0; no conv LoRA is trained")
        if cfg.keep_tokens and not (cfg.shuffle_caption or cfg.tag_dropout_rate):
            out.append("keep_tokens only matters with shuffle_caption or tag_dropout_rate")
        if cfg.sample_prompts and not cfg.sample_every_n_steps:
            out.append("sample_prompts are set but sample_every_n_steps is 0; no samples are rendered during training")
    else:
        unused = [n for n in ("save_every_n_epochs", "save_last_n", "bad_data")
                  if getattr(cfg, n) != getattr(defaults, n)]
        if unused:
            out.append(f"ignored for task_type text-generation: {', '.join(unused)} (image-run settings)")
    return out


def require_keys(cfg: TrainConfig, source: str = "config") -> None:
    """Raise UserError when a key needed to start training is missing."""
    for key in ("base_model", "train_data_dir"):
        if not getattr(cfg, key):
            raise UserError(f"{source}: '{key}' is not set; add `{key}: PATH` to the config or pass "
                            f"--set {key}=PATH")
