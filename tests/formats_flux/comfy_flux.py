"""ComfyUI's Flux LoRA loading, reproduced from reading its sources (no ComfyUI code is copied or run here).

Checked against real ComfyUI 0.3.64 (Comfy-Org/ComfyUI a125cd84) by ``test_real_comfyui.py``: the same key map
(except the bare diffusers names, added after 0.3.64) and the same weight changes.

Read at comfyanonymous/ComfyUI: ``comfy/lora.py`` (``model_lora_keys_unet``, ``model_lora_keys_clip``,
``load_lora``, ``calculate_weight``), ``comfy/utils.py`` (``flux_to_diffusers``, ``swap_scale_shift``),
``comfy/weight_adapter/lora.py`` (``LoRAAdapter.load`` / ``calculate_weight``). What those do for a Flux
model, restated:

- Key map, transformer (state keys ``diffusion_model.<BFL path>.weight``): ``lora_unet_<path with _>`` and the
  bare ``diffusion_model.<path>`` name the weight; diffusers names (``transformer.<path>``, OneTrainer's
  ``lora_transformer_<path with _>``, ``lycoris_…`` and, after 0.3.64, DiffSynth's bare path) name it too,
  q/k/v (and ``proj_mlp``) as a row slice ``(dim 0, offset, size)`` of ``qkv``/``linear1`` with offsets from
  ``hidden_size`` (the MLP slice is ``4 * hidden_size`` rows), and ``norm_out.linear`` with
  ``swap_scale_shift`` applied to the delta; the q/k RMSNorm scales and ControlNet's ``pos_embed_input`` too.
  ``diffusion_model.<key>`` names every non-``.weight`` key, ``…single_blocks.N.linear1_qkv`` the q/k/v rows.
- Key map, text encoders (state keys ``clip_l.transformer.…``, ``t5xxl.transformer.…``): ``text_encoders.<key>``
  for every weight; CLIP-L also ``lora_te_`` / ``lora_te1_`` + ``text_model_encoder_layers_N_<leaf>`` (six leaves)
  and diffusers' ``text_encoder.text_model.encoder.layers.N.<leaf>``; T5 ``lora_te2_`` (OneTrainer) and
  ``lora_te3_`` + its path with ``_`` when CLIP-L is present (no CLIP-G); ``lora_te1_text_projection``.
- ``load_lora``: for each mapped name ``x``: ``x.alpha``; up/down pairs spelled ``x.lora_up.weight``/
  ``x.lora_down.weight``, ``x_lora.up.weight``, ``x.lora_B.weight``/``x.lora_A.weight``, ``x.lora.up.weight``,
  ``x.lora_B``, ``x.lora_linear_layer.up.weight``, ``x.lora_B.default.weight``; every other key of the file is
  logged "lora key not loaded".
- Applying: ``weight.narrow(*slice) += function(strength * alpha / rank * (up @ down))`` (scale 1 without alpha).
"""

from __future__ import annotations

import numpy as np

_CLIP_LEAVES = ("mlp.fc1", "mlp.fc2", "self_attn.k_proj", "self_attn.q_proj", "self_attn.v_proj", "self_attn.out_proj")
_DOUBLE = {"attn.to_out.0": "img_attn.proj.weight", "norm1.linear": "img_mod.lin.weight",
           "norm1_context.linear": "txt_mod.lin.weight", "attn.to_add_out": "txt_attn.proj.weight",
           "ff.net.0.proj": "img_mlp.0.weight", "ff.net.2": "img_mlp.2.weight",
           "ff_context.net.0.proj": "txt_mlp.0.weight", "ff_context.net.2": "txt_mlp.2.weight",
           "attn.norm_q": "img_attn.norm.query_norm.scale", "attn.norm_k": "img_attn.norm.key_norm.scale",
           "attn.norm_added_q": "txt_attn.norm.query_norm.scale", "attn.norm_added_k": "txt_attn.norm.key_norm.scale"}
_SINGLE = {"norm.linear": "modulation.lin.weight", "proj_out": "linear2.weight",
           "attn.norm_q": "norm.query_norm.scale", "attn.norm_k": "norm.key_norm.scale"}
_TOP = {"proj_out": "final_layer.linear", "x_embedder": "img_in", "context_embedder": "txt_in",
        "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
        "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
        "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
        "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
        "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
        "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
        "controlnet_x_embedder": "pos_embed_input"}


def swap_scale_shift(delta: np.ndarray) -> np.ndarray:
    """ComfyUI's ``swap_scale_shift``: the two output halves exchanged."""
    half = delta.shape[0] // 2
    return np.concatenate([delta[half:], delta[:half]])


def _diffusers_targets(depth: int, depth_single: int, hidden: int) -> dict[str, object]:
    """{diffusers module path: target} as ``flux_to_diffusers`` maps the ``.weight`` keys."""
    out: dict[str, object] = {}
    for n in range(depth):
        src, dst = f"transformer_blocks.{n}", f"diffusion_model.double_blocks.{n}"
        for i, p in enumerate("qkv"):
            out[f"{src}.attn.to_{p}"] = (f"{dst}.img_attn.qkv.weight", (0, i * hidden, hidden))
            out[f"{src}.attn.add_{p}_proj"] = (f"{dst}.txt_attn.qkv.weight", (0, i * hidden, hidden))
        out.update({f"{src}.{a}": f"{dst}.{b}" for a, b in _DOUBLE.items()})
    for n in range(depth_single):
        src, dst = f"single_transformer_blocks.{n}", f"diffusion_model.single_blocks.{n}"
        for i, p in enumerate("qkv"):
            out[f"{src}.attn.to_{p}"] = (f"{dst}.linear1.weight", (0, i * hidden, hidden))
        out[f"{src}.proj_mlp"] = (f"{dst}.linear1.weight", (0, 3 * hidden, 4 * hidden))
        out.update({f"{src}.{a}": f"{dst}.{b}" for a, b in _SINGLE.items()})
    out.update({a: f"diffusion_model.{b}.weight" for a, b in _TOP.items()})
    out["norm_out.linear"] = ("diffusion_model.final_layer.adaLN_modulation.1.weight", None, swap_scale_shift)
    return out


def key_map(state_keys, depth: int, depth_single: int, hidden: int, diffsynth: bool = True) -> dict[str, object]:
    """{LoRA module name: target state key, or (key, row slice or None[, function])} for a Flux model whose
    transformer keys are ``diffusion_model.*``, text-encoder keys ``clip_l.transformer.*``/``t5xxl.transformer.*``.
    ``diffsynth``: the bare diffusers names too (ComfyUI after 0.3.64 maps them; 0.3.64 does not)."""
    out: dict[str, object] = {}
    keys = [k for k in state_keys if k.endswith(".weight")]
    for k in state_keys:
        if k.startswith("diffusion_model.") and k.endswith(".weight"):
            out["lora_unet_" + k[len("diffusion_model."):-len(".weight")].replace(".", "_")] = k
            out[k[:-len(".weight")]] = k
        elif k.startswith("diffusion_model."):
            out[k] = k
    for path, target in _diffusers_targets(depth, depth_single, hidden).items():
        for name in ("transformer." + path, "lycoris_" + path.replace(".", "_"),
                     "lora_transformer_" + path.replace(".", "_")) + ((path,) if diffsynth else ()):
            out[name] = target
    for k in keys:
        if k.startswith("diffusion_model.") and ".linear1." in k:
            out[k.replace(".linear1.weight", ".linear1_qkv")] = (k, (0, 0, 3 * hidden))
    clip_l = False
    for k in keys:
        if k.startswith(("clip_l.", "t5xxl.")):
            out["text_encoders." + k[:-len(".weight")]] = k
    for b in range(32):
        for leaf in _CLIP_LEAVES:
            k = f"clip_l.transformer.text_model.encoder.layers.{b}.{leaf}.weight"
            if k in keys:
                kohya = f"text_model_encoder_layers_{b}_{leaf.replace('.', '_')}"
                out["lora_te_" + kohya] = out["lora_te1_" + kohya] = k
                out[f"text_encoder.text_model.encoder.layers.{b}.{leaf}"] = k
                clip_l = True
    for k in keys:
        if k.startswith("t5xxl.transformer."):
            path = k[len("t5xxl.transformer."):-len(".weight")].replace(".", "_")
            if clip_l:
                out["lora_te2_" + path] = k
            out[f"lora_te{3 if clip_l else 1}_" + path] = k
    if "clip_l.transformer.text_projection.weight" in keys:
        out["lora_te1_text_projection"] = "clip_l.transformer.text_projection.weight"
    return out


_SPELLINGS = (("{}.lora_up.weight", "{}.lora_down.weight"), ("{}_lora.up.weight", "{}_lora.down.weight"),
              ("{}.lora_B.weight", "{}.lora_A.weight"), ("{}.lora.up.weight", "{}.lora.down.weight"),
              ("{}.lora_B", "{}.lora_A"), ("{}.lora_linear_layer.up.weight", "{}.lora_linear_layer.down.weight"),
              ("{}.lora_B.default.weight", "{}.lora_A.default.weight"))


def load_and_apply(lora: dict[str, np.ndarray], mapping: dict[str, object],
                   weights: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], list[str]]:
    """(patched float32 copies of ``weights``, keys of ``lora`` not loaded) at strength 1."""
    patched = {k: np.array(v, dtype=np.float32) for k, v in weights.items()}
    loaded: set[str] = set()
    for x, target in mapping.items():
        alpha = None
        if f"{x}.alpha" in lora:
            alpha = float(np.asarray(lora[f"{x}.alpha"]))
            loaded.add(f"{x}.alpha")
        for up_name, down_name in _SPELLINGS:
            up_name, down_name = up_name.format(x), down_name.format(x)
            if up_name in lora:
                up, down = np.asarray(lora[up_name], np.float32), np.asarray(lora[down_name], np.float32)
                loaded.update((up_name, down_name))
                key, rows, function = (target, None, None) if isinstance(target, str) else (tuple(target) + (None,))[:3]
                scale = alpha / down.shape[0] if alpha is not None else 1.0
                delta = up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)
                if function is not None:
                    delta = function(delta)
                view = patched[key] if rows is None else patched[key][rows[1]:rows[1] + rows[2]]
                view += (scale * delta).reshape(view.shape)
                break
    return patched, sorted(set(lora) - loaded)
