"""``interp vlm``: analyses of vision-language models (visual sinks and VAR, FCCT and IRI, NOTICE, VHD and VHR).

Every subcommand takes a VLM spec, prompts with one image placeholder each (``--prompt``, repeated),
their images (``--image``: one per prompt, or one for all) and answers (``--answer``: one per prompt,
or one for all), writes its Results and SVG figures to ``--out`` and prints a short summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

vlm_app = typer.Typer(help="Vision-language models: visual sinks / VAR, FCCT / IRI, NOTICE, VHD / VHR.",
                      no_args_is_help=True)

_PROMPT = typer.Option(..., "--prompt", help="prompt with one image placeholder (repeat for several)")
_IMAGE = typer.Option(..., "--image", help="image file (one per prompt, or one for all)")
_ANSWER = typer.Option(..., "--answer", help="single-token answer (one per prompt, or one for all)")
_OUT = typer.Option(..., "--out", help="output folder")


def _per_prompt(values: list[Any], n: int, arg: str) -> list[Any]:
    from interp.errors import DataError

    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise DataError(f"{arg}: {len(values)} values for {n} prompts; give one per prompt or one for all")
    return values


def _setup(model: str, prompts: list[str], images: list[Path], out: Path) -> tuple[Any, Any]:
    from interp.cli._common import check_out_dir
    from interp.models import load_model, tokenize
    from interp.vlm.inputs import load_image

    ims = _per_prompt([str(p) for p in images], len(prompts), "--image")
    for i, p in enumerate(ims):
        load_image(p, f"--image {i}")                      # a missing / corrupt file fails before the model loads
    check_out_dir(out, "--out")
    m = load_model(model)
    return m, tokenize(m, prompts, images=ims)


def _save(out: Path, *results: Any) -> None:
    from interp.plots import export

    out.mkdir(parents=True, exist_ok=True)
    for r in results:
        r.save(out)
        export(r.figure(), out / f"{r.id.replace('.', '_')}.svg")


def _box(text: Optional[str]) -> Optional[tuple[float, ...]]:
    from interp.errors import ConfigError

    if text is None:
        return None
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise ConfigError(f"--box: expected x0,y0,x1,y1 in pixels, got {text!r}")
    return box


@vlm_app.command("sinks")
def sinks(model: str = typer.Argument(..., help="VLM spec, e.g. toy:llava or a local folder"),
          prompt: list[str] = _PROMPT, image: list[Path] = _IMAGE, answer: list[str] = _ANSWER, out: Path = _OUT,
          tau: float = typer.Option(20.0, "--tau", help="sink threshold on the RMS-normalised hidden state"),
          p: float = typer.Option(0.6, "--p", help="factor on the attention to sink tokens"),
          layers: Optional[str] = typer.Option(None, "--layers", help="comma-separated layers (default 2..L-2)"),
          ) -> None:
    """Visual attention sinks, image-centric heads and VAR's effect on the answers.

    Example: interp vlm sinks toy:llava --prompt "<image> Is it red?" --image red.png --answer Y --out out/vlm
    --tau 3 --layers 0,1
    """
    from interp.vlm import sinks as S

    cfg = S.VarConfig(tau=tau, p=p, layers=None if layers is None else tuple(int(x) for x in layers.split(",")))
    m, batch = _setup(model, prompt, image, out)
    found, heads = S.visual_sinks(m, batch, cfg), S.image_centric_heads(m, batch, cfg)
    var = S.var_effect(m, batch, _per_prompt(answer, len(prompt), "--answer"), cfg)
    _save(out, found, heads, var)
    t = var.table
    typer.echo(f"{int(found.table.is_image.sum())} visual sink tokens ({len(found.table)} in all), sink dims "
               f"{found.meta.extra['dims']}; VAR: accuracy {t.correct_base.mean():.2f} -> {t.correct_var.mean():.2f}, "
               f"answers changed {int(t.argmax_changed.sum())}/{len(t)}")
    typer.echo(f"wrote {out}/")


@vlm_app.command("fcct")
def fcct(model: str = typer.Argument(..., help="VLM spec"), prompt: list[str] = _PROMPT, image: list[Path] = _IMAGE,
         answer: list[str] = _ANSWER, out: Path = _OUT,
         box: Optional[str] = typer.Option(None, "--box", help="object box x0,y0,x1,y1 (pixels): object / early / "
                                           "late groups and the object-vs-others ratio"),
         noise: float = typer.Option(3.0, "--noise", help="noise std in units of the image embeddings' std"),
         seed: int = typer.Option(0, "--seed"),
         iri_component: str = typer.Option("attn_out", "--iri", help="IRI component: attn_out or mlp_out")) -> None:
    """FCCT recovery over layers x components x token groups, per-patch recovery map, and IRI.

    Example: interp vlm fcct toy:llava --prompt "<image> Is it red?" --image red.png --answer Y --box 8,8,16,16
    --out out/fcct
    """
    from interp.cli._common import check_choice
    from interp.vlm import fcct as F

    check_choice(iri_component, F.LAMBDA, "--iri")
    cfg = F.FcctConfig(noise=noise, seed=seed)
    m, batch = _setup(model, prompt, image, out)
    answers = _per_prompt(answer, len(prompt), "--answer")
    b = _box(box)
    grid = F.fcct(m, batch, answers, box=b, config=cfg)
    best = grid.table.sort_values("recovery", ascending=False).iloc[0]
    img = grid.table[(grid.table.group == "image") & (grid.table.component == "resid")]
    img_layer = int(img.sort_values("recovery", ascending=False).layer.iloc[0])   # where the image tokens matter most
    patches = F.fcct(m, batch, answers, groups=F.patch_groups(batch),
                     config=F.FcctConfig(noise=noise, seed=seed, components=("resid",), layers=(img_layer,)),
                     name="patches")
    injected = F.iri(m, batch, answers, grid, component=iri_component)
    _save(out, grid, patches, injected)
    typer.echo(f"p_clean {grid.meta.extra['p_clean']:.4f}, p_corrupt {grid.meta.extra['p_corrupt']:.4f}; best "
               f"recovery {best.recovery:.3f} ({best.component} at layer {best.layer}, group {best.group})")
    if b is not None:
        obj = grid.table[(grid.table.group == "object") & (grid.table.component == "resid")]
        layer = int(obj.sort_values("recovery", ascending=False).layer.iloc[0])
        ratio = F.object_ratio(m, batch, answers, b, layer=layer, config=cfg)
        ratio["result"].save(out)
        typer.echo(f"resid at layer {layer}: object patches recover {ratio['object']:.3f}, other patches of the same "
                   f"count {sum(ratio['others']) / len(ratio['others']):.3f} (difference {ratio['difference']:.3f}, "
                   f"ratio {ratio['ratio']:.2f})")
    t = injected.table
    typer.echo(f"IRI ({iri_component}): mean P(answer) {t.p_base.mean():.4f} -> {t.p_iri.mean():.4f}")
    typer.echo(f"wrote {out}/")


@vlm_app.command("notice")
def notice(model: str = typer.Argument(..., help="VLM spec"), prompt: list[str] = _PROMPT,
           image: list[Path] = _IMAGE, answer: list[str] = _ANSWER, out: Path = _OUT,
           counterfactual: list[str] = typer.Option(..., "--counterfactual", help="the corrupted run's answer"),
           corrupt_image: Optional[list[Path]] = typer.Option(None, "--corrupt-image", help="the minimal-pair image "
                                                              "(image corruption)"),
           replace: Optional[str] = typer.Option(None, "--replace", help="OLD=NEW: symmetric token replacement "
                                                 "(text corruption)"),
           component: str = typer.Option("z", "--component", help="z (heads), attn_out or mlp_out")) -> None:
    """NOTICE patching (normalised logit difference) with an image minimal pair or a text replacement.

    Example: interp vlm notice toy:llava --prompt "<image> red or blue?" --image red.png --corrupt-image blue.png
    --answer Y --counterfactual N --out out/notice
    """
    from interp.cli._common import check_choice
    from interp.errors import ConfigError
    from interp.models import tokenize
    from interp.vlm import notice as N

    check_choice(component, N.COMPONENT_KIND, "--component")
    if (corrupt_image is None) == (replace is None):
        raise ConfigError("give exactly one corruption: --corrupt-image (image minimal pair) or --replace OLD=NEW")
    if replace is not None and replace.count("=") != 1:
        raise ConfigError(f"--replace: expected OLD=NEW, got {replace!r}")
    m, batch = _setup(model, prompt, image, out)
    if corrupt_image is not None:
        corrupted = tokenize(m, prompt, images=_per_prompt([str(p) for p in corrupt_image], len(prompt),
                                                           "--corrupt-image"))
    else:
        old, new = replace.split("=")
        corrupted = tokenize(m, N.symmetric_replace(prompt, old, new),
                             images=_per_prompt([str(p) for p in image], len(prompt), "--image"))
    r = N.notice_patching(m, batch, corrupted, _per_prompt(answer, len(prompt), "--answer"),
                          _per_prompt(counterfactual, len(prompt), "--counterfactual"), component=component)
    out.mkdir(parents=True, exist_ok=True)
    r.save(out)
    t = r.table[r.table.metric == "logit_diff_norm"].sort_values("value", ascending=False)
    typer.echo(f"{r.meta.extra['corruption']} corruption: LD clean {r.meta.extra['ld_clean']:.3f}, corrupted "
               f"{r.meta.extra['ld_corr']:.3f}; top patches: " +
               ", ".join(f"{n or f'L{l}'} {v:.3f}" for n, l, v in zip(t.node[:5], t.layer[:5], t.value[:5])))
    typer.echo(f"wrote {out}/")


@vlm_app.command("vhd")
def vhd(model: str = typer.Argument(..., help="VLM spec"), prompt: list[str] = _PROMPT, image: list[Path] = _IMAGE,
        answer: list[str] = _ANSWER, out: Path = _OUT,
        alpha: float = typer.Option(2.0, "--alpha", help="VHR's factor on the selected heads' outputs"),
        k: Optional[int] = typer.Option(None, "--k", help="T-VHD: mean of the top k (default: heads per layer)"),
        ) -> None:
    """Vision-aware head divergence, its Spearman with exact head ablation, and VHR's effect.

    Example: interp vlm vhd toy:llava --prompt "<image> Is it red?" --image red.png --answer Y --out out/vhd
    """
    from interp.vlm import vhd as V

    m, batch = _setup(model, prompt, image, out)
    answers = _per_prompt(answer, len(prompt), "--answer")
    scores = V.vhd(m, batch, k=k, answers=answers, image_swap=len(prompt) > 1)   # a swap needs two images
    reinforced = V.vhr(m, batch, answers, scores, alpha=alpha)
    _save(out, scores, reinforced)
    t, x = reinforced.table, scores.meta.extra
    swap = (f"; Spearman(VHD, image-swap harm) {x['spearman_image_swap']:.3f}"
            if "spearman_image_swap" in x else "")
    typer.echo(f"T-VHD {x['t_vhd']:.4f}; Spearman(VHD, ablation harm) {x['spearman']:.3f}{swap}; VHR on "
               f"{int(scores.table.selected.sum())} heads: mean P(answer) {t.p_base.mean():.4f} -> "
               f"{t.p_vhr.mean():.4f}")
    typer.echo(f"wrote {out}/")


def register(app: typer.Typer) -> None:
    app.add_typer(vlm_app, name="vlm")
