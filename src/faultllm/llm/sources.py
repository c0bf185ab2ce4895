"""Where a model comes from: a hub id, a local directory, the tiny model, or random weights built from the
config.json of a hub model (shipped with faultllm, so no weights and no network are needed)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from faultllm.config.groups import ModelConfig
from faultllm.llm.tiny import ensure_tiny_model, stand_in_tokenizer
from faultllm.llm.tokenizer import pretrained_tokenizer
from faultllm.runtime.errors import FaultLLMError
from faultllm.runtime.paths import PACKAGE_DIR

log = logging.getLogger(__name__)


def resolve_model_path(model_cfg: ModelConfig, cache_dir: str) -> str:
    """The base model to load: a hub id, a local directory, the tiny model (shipped or built on first use),
    or with model.init=random a checkpoint of random weights built from the model's config.json."""
    if model_cfg.init == "random":
        return str(random_model(model_cfg, cache_dir))
    if model_cfg.build == "tiny":
        return str(ensure_tiny_model(model_cfg, cache_dir))
    path = str(model_cfg.path)
    local = _local_dir(path)
    if local is not None:
        return str(local)
    check_hub_access(path)
    return path


def _local_dir(path: str) -> Path | None:
    """The directory `model.path` names, None for a hub id; a local-looking path that is no directory is an error."""
    looks_local = path.startswith((".", "/", "~")) or Path(path).expanduser().exists()
    if looks_local and not Path(path).expanduser().is_dir():
        raise FaultLLMError(f"model.path={path}: no such model directory")
    return Path(path).expanduser() if looks_local else None


def check_hub_access(repo_id: str, filename: str = "config.json") -> None:
    """A hub model whose `filename` is not in the local cache needs the hub: fail in seconds with what to do
    instead of transformers' minute of retries (the token, if any, is never shown)."""
    from huggingface_hub import auth_check, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(repo_id, filename), str):
        return
    hint = "use model=tiny, or a local model directory: model.path=DIR"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise FaultLLMError(f"model.path={repo_id}: not in the local cache and HF_HUB_OFFLINE is set; {hint}")
    try:
        auth_check(repo_id)  # raises for a gated or private model this token cannot read
    except GatedRepoError as err:
        raise FaultLLMError(
            f"model.path={repo_id}: a gated model; accept its licence on huggingface.co, then "
            "`huggingface-cli login` (or set HF_TOKEN)"
        ) from err
    except RepositoryNotFoundError as err:
        raise FaultLLMError(f"model.path={repo_id}: no such model on the hub (or no access to it); {hint}") from err
    except Exception as err:  # connection refused, DNS, proxy, timeout: httpx/requests errors alike
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FaultLLMError(
            f"model.path={repo_id}: not cached and the hub cannot be reached ({reason}); {hint}"
        ) from err


# config.json of every hub model in configs/model/ (a few hundred bytes each), by hub id
SHIPPED_CONFIGS = PACKAGE_DIR / "assets" / "model_configs"


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's config.json and tokenizer come from, its weights untouched."""

    config_dir: str  # holds config.json
    tokenizer: str  # a directory or a hub id (from the hub cache, or downloaded: a few MB)


def model_files(model_cfg: ModelConfig, cache_dir: str) -> ModelFiles:
    """config.json from the tiny model, model.path's directory, the hub cache, the copy faultllm ships or the
    hub, in that order; the tokenizer from the same place (the hub: only when it can be reached)."""
    if model_cfg.build == "tiny":
        directory = str(ensure_tiny_model(model_cfg, cache_dir))
        return ModelFiles(directory, directory)
    path = str(model_cfg.path)
    local = _local_dir(path)
    if local is not None:
        if not (local / "config.json").exists():
            raise FaultLLMError(f"model.path={path}: no config.json there")
        return ModelFiles(str(local), str(local))
    return ModelFiles(str(hub_config_dir(path)), path)


def hub_config_dir(repo_id: str) -> Path:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, "config.json")
    if isinstance(cached, str):
        return Path(cached).parent
    if (SHIPPED_CONFIGS / repo_id / "config.json").exists():
        return SHIPPED_CONFIGS / repo_id
    check_hub_access(repo_id)
    return Path(hf_hub_download(repo_id, "config.json")).parent


def check_tokenizer(files: ModelFiles) -> None:
    """Fails in one line when the tokenizer is on the hub only and the hub cannot be reached."""
    if not Path(files.tokenizer).is_dir():
        check_hub_access(files.tokenizer, "tokenizer_config.json")


def random_model(model_cfg: ModelConfig, cache_dir: str) -> Path:
    """A checkpoint of the model's architecture with random weights, from its config.json and tokenizer alone
    (model.init=random): built once and cached, then loaded the usual way (4-bit on CUDA), so a benchmark
    measures the real model's speed and memory with no weight download. Never a result. With model.layers
    only the first that many layers: the real shapes, small enough for a CPU smoke run."""
    files = model_files(model_cfg, cache_dir)
    tokenizer = random_model_tokenizer(files)
    config_text = (Path(files.config_dir) / "config.json").read_text()
    key = hashlib.sha1(f"{config_text}|{tokenizer}|{model_cfg.layers}".encode()).hexdigest()[:10]
    target = Path(cache_dir).expanduser() / f"random-{Path(files.tokenizer).name}-{key}"
    if not (target / "config.json").exists():
        partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
        log.info(
            "model.init=random: building %s from its config.json alone (once; cached in %s)", files.tokenizer, target
        )
        _save_random(files.config_dir, tokenizer, model_cfg.layers, partial)
        partial.rename(target)  # atomic: concurrent builders never see half a checkpoint
    return target


# next to a shipped config.json: the special tokens (with their ids) and chat template of the model's tokenizer
STAND_IN = "tokenizer_stand_in.json"


def random_model_tokenizer(files: ModelFiles) -> str:
    """The tokenizer model.init=random saves with the weights: a local model's own, the hub's when cached, else
    the stand-in shipped for the model (`stand_in_tokenizer`: no network, no licence), else the hub's."""
    if Path(files.tokenizer).is_dir():
        return files.tokenizer
    from huggingface_hub import try_to_load_from_cache

    stand_in = SHIPPED_CONFIGS / files.tokenizer / STAND_IN
    if isinstance(try_to_load_from_cache(files.tokenizer, "tokenizer_config.json"), str) or not stand_in.exists():
        check_tokenizer(files)
        return files.tokenizer
    log.info("model.init=random: %s's tokenizer is not cached; a stand-in of its vocabulary is used", files.tokenizer)
    return str(stand_in)


def _save_random(config_dir: str, tokenizer_source: str, layers: int | None, target: Path) -> None:
    """Seeded random weights in bf16 (half the disk of fp32; the load casts them as the plan says)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_dir)
    if layers is not None:
        config.get_text_config().num_hidden_layers = layers
    tokenizer = _random_tokenizer(tokenizer_source, config.get_text_config().vocab_size)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # initializing 7B on a GPU takes seconds
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)
    del model


def _random_tokenizer(source: str, vocab_size: int):
    if source.endswith(STAND_IN):
        return stand_in_tokenizer(vocab_size, **json.loads(Path(source).read_text()))
    return pretrained_tokenizer(source)
