"""RoBERTa adapter: in transformers 5 the encoder uses BERT's module names under `roberta.`.

Differences from BERT that matter here: RobertaForSequenceClassification has no pooler; its
head is classifier.dense (hidden -> hidden, on the <s> token) then classifier.out_proj.
Position ids start after padding_idx, which does not affect slicing (tables keep their rows).
"""
from __future__ import annotations

from .bert import BertAdapter


class RobertaAdapter(BertAdapter):
    model_types = ("roberta",)
    architectures = ("RobertaForSequenceClassification",)
    base_attr = "roberta"

    def head_dense(self, model):
        return model.classifier.dense

    def classifier(self, model):
        return model.classifier.out_proj
