"""Text classification: single-label, multi-label and sentence pairs on any
AutoModelForSequenceClassification (a pretrained hfssl MLM output, a local checkpoint, a Hub id,
or the same architecture from random init)."""

from __future__ import annotations

import logging

import numpy as np

from hfssl.attention import OFFSET_POSITIONS, packed_layout
from hfssl.collators.finetune import TextClassificationCollator
from hfssl.errors import ConfigError
from hfssl.errors import DataError
from hfssl.finetune import data as fdata
from hfssl.finetune.heads import LayerProbe, PackedTextClassifier, SequenceClassifier, save_probe
from hfssl.hub import read_model_config
from hfssl.finetune.tasks import Rows, Task, apply_overrides, load_or_init, model_source

logger = logging.getLogger(__name__)


class TextClassificationTask(Task):
    name = "text-classification"
    input_unit = "examples"

    def __init__(self, cfg, accelerator=None):
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        super().__init__(cfg, accelerator)
        source, pretrained = model_source(cfg)
        tables = fdata.load_tables(cfg)
        names = {s: (cfg.dataset_name or getattr(cfg, f"{s}_file")) for s in tables}
        first_split = next((s for s in ("train", "validation", "test") if s in tables), None)
        if first_split is None:
            raise DataError("No data: give train_file/validation_file/test_file or dataset_name.")
        tables = {split: fdata.drop_unlabeled_marks(ds, cfg.label_column_name, split, names[split]) for split, ds in tables.items()}
        first = tables[first_split]
        self.text_column = fdata.pick_text_column(first, cfg.text_column_name, names[first_split])
        for split, ds in tables.items():
            fdata.require_column(ds, self.text_column, "text_column_name", names[split])
            fdata.require_column(ds, cfg.text_pair_column_name, "text_pair_column_name", names[split])
            if split != "test" or cfg.label_column_name in ds.column_names:
                fdata.require_column(ds, cfg.label_column_name, "label_column_name", names[split])
            for column in (self.text_column, cfg.text_pair_column_name):
                if column is not None:
                    fdata.check_no_nulls(ds, column, f"{names[split]} ({split})")

        config = read_model_config(source, "model_name_or_path" if pretrained else "config_name")
        if cfg.do_train:
            space = fdata.build_label_space(tables["train"], cfg.label_column_name, cfg.multi_label, cfg.label_separator, names["train"])
        else:  # an existing classifier: its own labels
            if not any(a.endswith("ForSequenceClassification") for a in (config.architectures or [])):
                raise ConfigError(f"do_train false evaluates a fine-tuned classifier; '{source}' is a "
                                  f"{', '.join(config.architectures or [config.model_type])}, not one.")
            id2label = config.id2label
            space = fdata.LabelSpace([id2label[i] for i in sorted(id2label, key=int)],
                                     getattr(config, "problem_type", None) == "multi_label_classification")
        self.labels = space
        for split, ds in tables.items():
            if split != "train" and cfg.label_column_name in ds.column_names:
                fdata.check_labels_known(ds, cfg.label_column_name, space, cfg.label_separator, split, names[split],
                                         None if cfg.do_train else source)

        # Splits: carve validation from train if needed, then the label budget (train only).
        if "train" in tables:
            keys = self._strata(tables["train"])
            if "validation" not in tables and cfg.validation_split_percentage > 0:
                tables["train"], tables["validation"] = fdata.hold_out_validation(
                    tables["train"], keys, cfg.validation_split_percentage, cfg.seed, names["train"])
                names["validation"] = f"{names['train']} (held out)"
                keys = self._strata(tables["train"])
            tables["train"] = fdata.label_budget(tables["train"], keys, cfg.label_fraction, cfg.max_train_samples, cfg.seed)
        self.raw = tables
        self.sources = names

        # Tokenizer and model.
        tok_source = cfg.tokenizer_name or source
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tok_source)
        except (OSError, ValueError) as e:
            raise ConfigError(f"No tokenizer in '{tok_source}' ({e}). Set tokenizer_name.") from None
        config.num_labels = len(space.names)
        config.id2label = dict(enumerate(space.names))
        config.label2id = space.label2id
        config.problem_type = "multi_label_classification" if space.multi_label else "single_label_classification"
        apply_overrides(config, cfg.config_overrides)
        max_pos = getattr(config, "max_position_embeddings", None)
        if max_pos is not None and config.model_type in OFFSET_POSITIONS:
            max_pos -= 2  # position ids start after the padding index
        self.max_length = min(cfg.max_seq_length, max_pos) if max_pos else cfg.max_seq_length
        if self.max_length < cfg.max_seq_length:
            logger.info("max_seq_length %d exceeds the model's %d positions: using %d.", cfg.max_seq_length, max_pos, self.max_length)
        self.tokenizer.model_max_length = min(self.tokenizer.model_max_length, self.max_length)
        packing = None
        if cfg.probe:
            upstream = load_or_init(AutoModel, cfg, config, pretrained, source)
            n_states = config.num_hidden_layers + 1
            self.model = LayerProbe(upstream, n_states, config.hidden_size, len(space.names), cfg.probe_hidden_size,
                                    multi_label=space.multi_label)
        else:
            clf = load_or_init(AutoModelForSequenceClassification, cfg, config, pretrained, source)
            if clf.config.vocab_size < len(self.tokenizer):
                raise ConfigError(f"The model's vocab_size ({clf.config.vocab_size}) is smaller than the tokenizer's "
                                  f"vocabulary ({len(self.tokenizer)}): use the model's own tokenizer.")
            packing = packed_layout(clf.config, self.max_length, cfg.padding_free)  # every PACKABLE type is in CLASSIFIER_HEADS
            self.model = (SequenceClassifier if packing is None else PackedTextClassifier)(clf, space.multi_label)
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.collator = TextClassificationCollator(pad_id, packing)

        encoded = {split: self._encode(ds, split) for split, ds in tables.items()}
        self.train_dataset = Rows(encoded["train"], train=True) if "train" in encoded else None
        self.eval_dataset = Rows(encoded["validation"], train=False) if "validation" in encoded else None
        self.test_dataset = Rows(encoded["test"], train=False) if "test" in encoded else None
        if self.train_dataset is not None:
            logger.info("Text classification: %d labels%s; %d train / %s validation / %s test examples.",
                        len(space.names), " (multi-label)" if space.multi_label else "", len(self.train_dataset),
                        len(self.eval_dataset) if self.eval_dataset else 0, len(self.test_dataset) if self.test_dataset else 0)

    def _strata(self, ds) -> list[str]:
        values = ds[self.cfg.label_column_name]
        if self.labels.multi_label:
            return [(fdata.split_labels(v, self.cfg.label_separator) or [""])[0] for v in values]
        feature_names = fdata.class_label_names(ds, self.cfg.label_column_name)
        return [feature_names[v] if feature_names else fdata.label_key(v) for v in values]

    def _encode(self, ds, split):
        cfg, space = self.cfg, self.labels
        has_labels = cfg.label_column_name in ds.column_names
        class_names = fdata.class_label_names(ds, cfg.label_column_name) if has_labels else None
        pair = cfg.text_pair_column_name

        def encode(batch):
            enc = self.tokenizer(batch[self.text_column], batch[pair] if pair else None, truncation=True,
                                 max_length=self.max_length, return_attention_mask=False)
            out = {"input_ids": enc["input_ids"]}
            if "token_type_ids" in enc:
                out["token_type_ids"] = enc["token_type_ids"]
            if has_labels:
                values = batch[cfg.label_column_name]
                if class_names:
                    values = [class_names[v] for v in values]
                out["labels"] = [space.encode(v, cfg.label_separator) for v in values]
            return out

        return ds.map(encode, batched=True, remove_columns=ds.column_names, desc=f"Tokenizing {split}")

    # ------------------------------------------------------------------ after training
    def evaluate_outputs(self, split: str, outputs: list[np.ndarray]) -> tuple[dict, list[dict]]:
        """Per-example logits -> (metrics without prefix, prediction rows)."""
        from hfssl.finetune.metrics import classification_metrics

        raw = self.raw[split]
        logits = np.stack(outputs)  # (N, L)
        names = self.labels.names
        rows = []
        if self.labels.multi_label:
            pred = (logits > 0).astype(int)
            for i in range(len(raw)):
                rows.append({"text": raw[i][self.text_column], "prediction": [names[j] for j in np.flatnonzero(pred[i])],
                             "scores": (1 / (1 + np.exp(-logits[i]))).round(4).tolist()})
        else:
            pred = logits.argmax(-1)
            probs = np.exp(logits - logits.max(-1, keepdims=True))
            probs /= probs.sum(-1, keepdims=True)
            for i in range(len(raw)):
                rows.append({"text": raw[i][self.text_column], "prediction": names[pred[i]], "score": round(float(probs[i, pred[i]]), 4)})
        has_labels = self.cfg.label_column_name in raw.column_names
        if not has_labels:
            return {}, rows
        refs = np.asarray([r["labels"] for r in self._labels_of(split)])
        for row, ref in zip(rows, refs):
            row["label"] = [names[j] for j in np.flatnonzero(ref)] if self.labels.multi_label else names[int(ref)]
        metrics = classification_metrics(pred, refs, names, self.labels.multi_label)
        if not self.labels.multi_label:
            from hfssl.finetune.metrics import confusion_matrix

            self.last_confusion = confusion_matrix(pred, refs, len(names))
        return metrics, rows

    def _labels_of(self, split):
        ds = {"validation": self.eval_dataset, "test": self.test_dataset, "train": self.train_dataset}[split]
        return [ds.rows[i] for i in range(len(ds))]

    def save_pretrained(self, output_dir: str, summary: dict) -> None:
        if self.is_probe:
            save_probe(self.model, output_dir, self.cfg.model_name_or_path or self.cfg.config_name)
        else:
            self.model.model.save_pretrained(output_dir)
        self.tokenizer.save_pretrained(output_dir)

