"""Write an open_clip model as the ONNX folder Immich publishes on the hub (`immich-app/<name>__<tag>`).

The layout and conventions follow Immich's exporter (machine-learning/export in immich-app/immich):
`config.json` is open_clip's model config; `visual/model.onnx` takes float32 `image` [1, 3, S, S] and
`textual/model.onnx` int32 `text` [1, context]: the batch is fixed at 1, the outputs (`embedding`) are
L2-normalised; `visual/preprocess_cfg.json` is open_clip's preprocess config; `textual/` holds the Hugging Face
CLIP tokenizer files (`tokenizer.json`, `vocab.json`, `merges.txt`, `tokenizer_config.json`).

The suite uses it to test the torch-free path on a model it trained, offline: no hub file can be fetched here.

    python -m tests.hubfolder OUT_DIR        # the tiny trained model (trained first if need be)
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import open_clip
import torch

START, END = "<|startoftext|>", "<|endoftext|>"  # Hugging Face's spelling of CLIP's special tokens


def write(model_name: str, checkpoint: Path, out: Path, config_file: Path | None = None) -> Path:
    """Export (name, checkpoint) into out/ in the hub layout; returns out."""
    if config_file is not None:
        open_clip.add_model_config(config_file)
    model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=str(checkpoint))
    model.eval()
    tokenizer = open_clip.get_tokenizer(model_name)
    (out / "visual").mkdir(parents=True, exist_ok=True)
    (out / "textual").mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(open_clip.get_model_config(model_name)))
    preprocess = open_clip.get_model_preprocess_cfg(model)
    (out / "visual" / "preprocess_cfg.json").write_text(json.dumps({**preprocess, "mode": "RGB"}))
    size = preprocess["size"] if isinstance(preprocess["size"], int) else preprocess["size"][0]
    _export(_Visual(model), torch.zeros(1, 3, size, size), "image", out / "visual" / "model.onnx")
    tokens = tokenizer(["a photo"]).to(torch.int32)
    _export(_Textual(model), tokens, "text", out / "textual" / "model.onnx")
    _tokenizer_files(tokenizer, out / "textual")
    return out


class _Visual(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(image, normalize=True)


class _Textual(torch.nn.Module):
    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(text.long(), normalize=True)


def _export(module: torch.nn.Module, example: torch.Tensor, name: str, path: Path) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (example,), str(path), dynamo=True, opset_version=18, input_names=[name],
            output_names=["embedding"], verbose=False,
        )  # fmt: skip


def _tokenizer_files(tokenizer: object, folder: Path) -> None:
    """Hugging Face's CLIPTokenizer files, from open_clip's vocabulary (the same ids)."""
    encoder = dict(tokenizer.encoder)  # type: ignore[attr-defined]
    vocab = {_hf(piece): i for piece, i in encoder.items()}
    merges = [" ".join(pair) for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda kv: kv[1])]  # type: ignore[attr-defined]
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tokenizer_json = {
        "version": "1.0",
        "added_tokens": [{"id": vocab[START], "content": START}, {"id": vocab[END], "content": END}],
        "model": {"type": "BPE", "vocab": vocab, "merges": merges, "end_of_word_suffix": "</w>"},
    }
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False))
    config = {"tokenizer_class": "CLIPTokenizer", "pad_token": END, "bos_token": START, "eos_token": END}
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": tokenizer.context_length}))  # type: ignore[attr-defined]


def _hf(piece: str) -> str:
    return {"<start_of_text>": START, "<end_of_text>": END}.get(piece, piece)


if __name__ == "__main__":
    from tests import tinyclip

    tiny = tinyclip.load_or_train(Path(".pytest_cache/d/tinyclip"))
    print(write(tiny.name, tiny.checkpoint_path, Path(sys.argv[1]), tiny.config_path))
