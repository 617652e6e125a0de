"""`ldm-serve generate`: the model from the command line, no server."""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.schema import DEFAULT_LIMITS, Sampler, Task, Txt2ImgRequest, request_model

if TYPE_CHECKING:  # the registrar stays light: model/ loads torch
    from collections.abc import Mapping, Sequence

    from PIL.Image import Image
    from pydantic import ValidationError

    from model.pipeline import Pipeline

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "default"
# The shipped model's own request defaults (models/default/README.md): trained at 64x64, tuned at
# guidance 3 (training/evaluate.py GUIDANCE_SCALE, chosen on validation prompts; 7.5 draws
# rounder shapes). Repeated, not imported: model/ loads torch, which `ldm-serve api` never does.
DEFAULT_MODEL_SIZE = 64
DEFAULT_MODEL_GUIDANCE = 3.0
DEFAULT_SAMPLER = Txt2ImgRequest.model_fields["sampler"].default
# The API's per-field bounds (jobs/schema.py), down to the smallest size LDM_MIN_SIZE may allow,
# without its pixel and cost caps: those share a server's time, and here the caller waits alone.
LIMITS = replace(DEFAULT_LIMITS, min_size=8, max_pixels=DEFAULT_LIMITS.max_size**2, max_cost=2**62)
OPTIONS = {"guidance_scale": "--guidance"}  # request fields whose option is not --field-name


def default_model() -> str:
    """`LDM_MODEL` if set, else the shipped default model."""
    return os.environ.get("LDM_MODEL") or str(DEFAULT_MODEL)


def run_generate(args: argparse.Namespace) -> int:
    from model.checkpoint.files import CheckpointError
    from model.devices import DTYPES, resolve_device
    from model.engine import BatchEngine
    from model.pipeline import load_pipeline
    from model.txt2img import run, specs_for

    started = time.perf_counter()
    try:
        pipe = load_pipeline(args.model, resolve_device(args.device), DTYPES[args.dtype],
                             args.config, args.clip_skip)  # fmt: skip
    except CheckpointError as error:  # a path that is no model: one line, as for other options
        print(f"ldm-serve generate: error: {model_problem(args.model, error)}", file=sys.stderr)
        return 2
    if args.compile:  # compiled lazily, per bucket, on the first call (model/compiled.py)
        from model.compiled import persist_cache

        persist_cache(Path.home() / ".cache" / "ldm-serve" / "inductor")
        pipe.compile()
    loaded = time.perf_counter()
    problem = sampling_options(args, pipe)
    if problem:
        print(f"ldm-serve generate: error: {problem}", file=sys.stderr)
        return 2
    if not pipe.text_conditioned:  # unconditional (or LDM-SR) models read no prompt
        if args.prompt or args.negative_prompt:
            print("warning: this model reads no prompt: ignored", file=sys.stderr)
        args.prompt = ""
    elif args.prompt is None:
        print(f"ldm-serve generate: error: --prompt is required: {args.model} runs "
              f"{', '.join(pipe.tasks)}", file=sys.stderr)  # fmt: skip
        return 2
    else:
        for warning in advice(args, pipe.components.tokenizer):
            print(f"warning: {warning}", file=sys.stderr)
    n = args.num_images
    specs = specs_for(
        [args.prompt] * n, [args.negative_prompt] * n, [args.seed + i for i in range(n)],
        width=args.width, height=args.height, steps=args.steps, guidance_scale=args.guidance,
        sampler=args.sampler, eta=args.eta, karras=args.karras, class_label=args.class_label,
        **image_inputs(args),
    )  # fmt: skip
    images = run(BatchEngine(pipe), specs)
    done = time.perf_counter()
    save_images(images, args.out)
    print(f"loaded in {loaded - started:.2f}s, generated {n} image(s) in {done - loaded:.2f}s")
    return 0


def model_problem(model: str, error: Exception) -> str:
    """A checkpoint error as an option problem: `--model PATH: why`, the path said once."""
    return f"--model {model}: {str(error).removeprefix(f'{Path(model)}: ')}"


def save_images(images: Sequence[Image], out: str | Path) -> None:
    """Save one image as OUT, several as OUT-0, OUT-1, ... (its folder made); print each path."""
    out, n = Path(out), len(images)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if n == 1 else [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(n)]
    for image, path in zip(images, paths, strict=True):
        image.save(path)
        print(path)


def sampling_options(args: argparse.Namespace, pipe: Pipeline) -> str | None:
    """For models that sample without text (the paper's unconditional and class-conditional
    LDMs): the model's own size and the paper's guidance (1.5) where not given, and the class
    resolved to its index as the API does; what is wrong, else None."""
    from jobs.sample_request import SampleRequest, class_index

    embedder = pipe.components.class_embedder
    if embedder is None:
        if args.class_label is not None:
            return "--class-label: this model takes no class"
    elif args.class_label is None:
        last = embedder.config.labels - 1
        return f"--class-label is required: the model is class-conditional (0..{last})"
    else:
        names = embedder.config.class_names or ("",) * embedder.config.labels
        label = int(args.class_label) if args.class_label.isdigit() else args.class_label
        try:
            args.class_label = class_index(label, names)
        except ValueError as exc:
            return f"--class-label: {exc}"
    if "sample" in pipe.tasks:
        native = pipe.native_size
        args.width = native if native and not args.size_given[0] else args.width
        args.height = native if native and not args.size_given[1] else args.height
        if not args.guidance_given:
            args.guidance = SampleRequest.default_guidance
    return None


def advice(args: argparse.Namespace, tokenizer: object) -> list[str]:
    """What the API would warn about this request (jobs/model_profile.py), for this model."""
    from jobs.model_profile import ModelProfile
    from model.vocabulary import known_words

    native = DEFAULT_MODEL_SIZE if is_shipped(args.model) else 512
    task = Task.inpaint if args.mask else Task.img2img if args.init_image else Task.txt2img
    profile = ModelProfile(native, known_words(tokenizer))  # type: ignore[arg-type]
    found = profile.advise(args.prompt, args.negative_prompt, args.width, args.height, task)
    return [warning.message for warning in found]


def invalid_options(args: argparse.Namespace) -> str | None:
    """The options outside the API's bounds, in the words of its 422s; None when all fit."""
    from pydantic import ValidationError

    fields = ("prompt", "negative_prompt", "width", "height", "steps", "guidance_scale",
              "num_images", "seed", "eta")  # fmt: skip
    values = {name: getattr(args, "guidance" if name == "guidance_scale" else name)
              for name in fields}  # fmt: skip
    if values["prompt"] is None:  # none given: allowed for models without text (checked on load)
        values["prompt"] = "-"
    try:
        request_model(LIMITS)(**values)
    except ValidationError as exc:
        return option_problems(exc, OPTIONS)
    return None


def option_problems(exc: ValidationError, options: Mapping[str, str]) -> str:
    """A request's validation errors in the CLI's words, one line: `--option [value]: message`
    (strings are not echoed back; an error naming no field is the prompt's)."""
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else "prompt"
        option = options.get(name, "--" + name.replace("_", "-"))
        shown = "" if isinstance(error["input"], str | dict) else f" {error['input']}"
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{option}{shown}: {message}")
    return "; ".join(problems)


def missing_files(args: argparse.Namespace) -> str | None:
    """The first of --init-image and --mask that names nothing on disk (read before the model
    loads, which checks --model)."""
    for option, value in (("--init-image", args.init_image), ("--mask", args.mask)):
        if value is not None and not Path(value).exists():
            return f"{option} {value}: no such file or directory"
    return None


def positional_prompt(args: argparse.Namespace) -> str | None:
    """Take the prompt given positionally (`generate "a red circle"`, as `client` reads it) as
    --prompt; a problem when both are given and differ."""
    if args.prompt_text is not None:
        if args.prompt is not None and args.prompt != args.prompt_text:
            return f"two prompts: {args.prompt_text!r} and --prompt {args.prompt!r}; give one"
        args.prompt = args.prompt_text
    return None


def is_shipped(model: str) -> bool:
    """Whether `model` is the shipped default model."""
    return Path(model).resolve() == DEFAULT_MODEL.resolve()


def image_inputs(args: argparse.Namespace) -> dict[str, object]:
    """--init-image (img2img) and --mask (inpainting) as read and sized for the job, with the
    strength: 0.75 for img2img and 1.0 for inpainting unless given."""
    if args.init_image is None:
        if args.mask is not None:
            raise SystemExit("--mask needs --init-image")
        return {}
    from jobs.images import as_init_image, as_mask, decode, fit

    init = as_init_image(decode(Path(args.init_image).read_bytes(), max_pixels=1 << 26))
    inputs: dict[str, object] = {"init_image": fit(init, (args.width, args.height))}
    if args.mask is not None:
        mask = as_mask(decode(Path(args.mask).read_bytes(), max_pixels=1 << 26))
        inputs["mask_image"] = fit(mask, (args.width, args.height))
        inputs["keep_unmasked"] = args.keep_unmasked
    inputs["strength"] = (
        args.strength if args.strength is not None else (1.0 if args.mask is not None else 0.75)
    )
    return inputs


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    gen = commands.add_parser("generate", help="generate images locally from a prompt")
    gen.add_argument("--model", default=default_model(), help="diffusers folder or single file")
    gen.add_argument(
        "--config", default=None, help="diffusers folder with configs/tokenizer (single files)"
    )
    gen.add_argument(
        "--prompt", default=None, help="what to draw (required unless the model is unconditional)"
    )
    gen.add_argument("prompt_text", nargs="?", metavar="PROMPT", help="the same as --prompt")
    gen.add_argument("--negative-prompt", default="", help="what not to draw")
    gen.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    gen.add_argument("--steps", type=int, default=25, help="denoising steps")
    gen.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: 3 for the shipped model, else 7.5)",
    )
    gen.add_argument(
        "--sampler", choices=[s.value for s in Sampler], default=DEFAULT_SAMPLER, help="sampler"
    )
    gen.add_argument("--karras", action="store_true", help="Karras et al. (2022) sigmas")
    gen.add_argument(
        "--eta", type=float, default=None, help="noise scale (ddim: 0, euler_a: 1 by default)"
    )
    size = "multiple of 8 (default: the init image's, else 64 for the shipped model, else 512)"
    gen.add_argument("--width", type=int, default=None, help=size)
    gen.add_argument("--height", type=int, default=None, help=size)
    gen.add_argument("--num-images", type=int, default=1, help="images to generate")
    gen.add_argument(
        "--clip-skip", type=int, default=1, help="text encoder layer from the end (A1111's)"
    )
    gen.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    gen.add_argument(
        "--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help="precision"
    )
    gen.add_argument(
        "--init-image",
        default=None,
        help="image-to-image: start from this image (its size, rounded down to 8)",
    )
    gen.add_argument(
        "--mask",
        default=None,
        help="inpainting (with --init-image): white or transparent = repaint",
    )
    gen.add_argument(
        "--keep-unmasked",
        action="store_true",
        help="inpainting: paste the init image's unmasked pixels over the result (as A1111; "
        "the API's default), instead of diffusers' decoded image everywhere",
    )
    gen.add_argument(
        "--strength",
        type=float,
        default=None,
        help="how much of the schedule to run from the init image "
        "(default: 0.75 img2img, 1 inpainting)",
    )
    gen.add_argument(
        "--compile",
        action="store_true",
        help="inductor on the CPU, CUDA graphs on a GPU (first run per shape compiles)",
    )
    gen.add_argument(
        "--class-label",
        default=None,
        help="class-conditional models: the class, an index or a name ('goldfish')",
    )
    gen.add_argument("-o", "--out", required=True, help="FILE.png (FILE-i.png for several images)")
    gen.set_defaults(handler=_with_model_defaults)


def _with_model_defaults(args: argparse.Namespace) -> int:
    """Default size and guidance: the shipped model's own (64, 3), else the service's (512, 7.5);
    options outside the API's bounds: one line on stderr and exit code 2, like argparse's."""
    problem = missing_files(args) or positional_prompt(args)
    if problem:
        print(f"ldm-serve generate: error: {problem}", file=sys.stderr)
        return 2
    shipped = is_shipped(args.model)
    size = DEFAULT_MODEL_SIZE if shipped else 512
    # models that sample without text default to their own size and guidance (known once loaded)
    args.size_given = (args.width is not None, args.height is not None)
    args.guidance_given = args.guidance is not None
    if args.init_image is not None:  # the init image's size unless given
        from jobs.images import decode, job_size

        image = decode(Path(args.init_image).read_bytes(), max_pixels=1 << 26)
        args.width, args.height = job_size(image, args.width, args.height)
    args.width = args.width or size
    args.height = args.height or size
    if args.guidance is None:
        args.guidance = DEFAULT_MODEL_GUIDANCE if shipped else 7.5
    problems = invalid_options(args)
    if problems:
        print(f"ldm-serve generate: error: {problems}", file=sys.stderr)
        return 2
    return run_generate(args)
