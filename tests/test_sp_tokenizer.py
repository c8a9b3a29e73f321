"""SentencePieceTokenizer: id layout, round trips, strictness, determinism."""

import io
import random

import pytest
import sentencepiece as spm

from r3jax.data import sp_tokenizer
from r3jax.data.sp_tokenizer import SentencePieceTokenizer
from r3jax.data.tokenizer import TASKS

WORDS = ("a man woman dog cat riding sitting on the horse red blue table with "
         "two people standing near street what color is how many are there "
         "yes no small large green bicycle pizza eating plate").split()
VOCAB = 120


def corpus(n: int = 300, seed: int = 0) -> list[str]:
  rng = random.Random(seed)
  return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10)))
          for _ in range(n)]


@pytest.fixture(scope="module")
def tok() -> SentencePieceTokenizer:
  return sp_tokenizer.train(corpus(), VOCAB)


def raw_model(**options) -> bytes:
  """A model trained by plain SentencePiece, not by sp_tokenizer.train."""
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus()), model_writer=model, vocab_size=60,
      hard_vocab_limit=False, num_threads=1, minloglevel=2, **options)
  return model.getvalue()


def test_special_and_task_ids(tok):
  assert (tok.pad_id, tok.eos_id, tok.sep_id, tok.unk_id) == (0, 1, 2, 3)
  assert [tok.task_id(t) for t in TASKS] == [4, 5, 6, 7, 8]
  sp = spm.SentencePieceProcessor(model_proto=tok.model_proto)
  assert [sp.id_to_piece(i) for i in range(9)] == [
      "<pad>", "<eos>", "<sep>", "<unk>", "<caption>", "<vqa>", "<ita>",
      "<reflect>", "<refine>"]
  assert sp.bos_id() == -1
  assert 9 < tok.vocab_size <= VOCAB
  with pytest.raises(KeyError, match="caption"):
    tok.task_id("captioning")


def test_round_trip_lowercase_exact(tok):
  for text in corpus(50, seed=1):  # unseen sentences of seen words
    ids = tok.encode(text, strict=True)
    assert all(9 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_mixed_case_comes_back_lowercased(tok):
  text = "A Man RIDING the  Red   Bicycle"
  assert tok.decode(tok.encode(text)) == "a man riding the red bicycle"
  assert tok.encode(text) == tok.encode(text.lower())


def test_decode_stops_at_eos_and_drops_pad_sep_task(tok):
  ids = tok.encode("a dog eating pizza")
  other = tok.encode("two cats")
  seq = [tok.task_id("vqa"), *ids[:2], tok.sep_id, *ids[2:], tok.pad_id,
         tok.eos_id, *other]
  assert tok.decode(seq) == "a dog eating pizza"
  assert tok.decode([tok.eos_id, *ids]) == ""


def test_unknown_and_out_of_range_ids_are_visible(tok):
  ids = tok.encode("a red horse")
  for bad in (tok.unk_id, tok.vocab_size, tok.vocab_size + 7, -1):
    assert tok.decode([*ids, bad]) == "a red horse <unk>"
    assert tok.decode([bad, *ids]) == "<unk> a red horse"
  # A character never seen in training encodes to <unk>, which stays visible.
  assert tok.decode(tok.encode("a red horse \u00e9")) == "a red horse <unk>"


@pytest.mark.parametrize("text", ["<eos>", "a man <caption> riding",
                                  "a <SEP> b", "<unk>", "x <pad>"])
def test_strict_rejects_special_strings(tok, text):
  with pytest.raises(ValueError, match="special token"):
    tok.encode(text, strict=True)


@pytest.mark.parametrize("text", ["", "   ", "\t\n"])
def test_strict_rejects_empty_text(tok, text):
  with pytest.raises(ValueError, match="empty"):
    tok.encode(text, strict=True)
  assert tok.encode(text) == []


def test_non_strict_special_string_is_plain_text(tok):
  ids = tok.encode("a man <eos> <caption> <sep>")
  assert ids[:2] == tok.encode("a man")
  specials = {tok.pad_id, tok.eos_id, tok.sep_id,
              *(tok.task_id(t) for t in TASKS)}
  assert not specials & set(ids)
  assert len(ids) > 3  # the markup is segmented, not dropped


def test_training_is_deterministic(tok):
  again = sp_tokenizer.train(corpus(), VOCAB, seed=0)
  assert again.model_proto == tok.model_proto
  texts = corpus(30, seed=2)
  assert [again.encode(t) for t in texts] == [tok.encode(t) for t in texts]
  different = sp_tokenizer.train(corpus(seed=3)[:40], VOCAB)
  assert different.model_proto != tok.model_proto


def test_save_load_round_trip(tok, tmp_path):
  path = str(tmp_path / "tok.model")
  tok.save(path)
  assert not (tmp_path / "tok.model.tmp").exists()
  loaded = SentencePieceTokenizer.load(path)
  assert loaded.vocab_size == tok.vocab_size
  assert loaded.model_proto == tok.model_proto
  texts = corpus(30, seed=4)
  assert [loaded.encode(t) for t in texts] == [tok.encode(t) for t in texts]
  # The file is a plain SentencePiece model.
  sp = spm.SentencePieceProcessor(model_file=path)
  assert sp.encode(texts[0]) == tok.encode(texts[0])


def test_load_rejects_wrong_layout(tmp_path):
  path = tmp_path / "raw.model"
  path.write_bytes(raw_model())  # default layout: <unk>=0, <s>=1, </s>=2
  with pytest.raises(ValueError, match="raw.model.*<pad>"):
    SentencePieceTokenizer.load(str(path))


def test_load_rejects_model_without_case_folding(tmp_path):
  proto = raw_model(
      pad_id=0, pad_piece="<pad>", eos_id=1, eos_piece="<eos>", unk_id=3,
      bos_id=-1, control_symbols=["<sep>"] + [f"<{t}>" for t in TASKS],
      normalization_rule_name="nmt_nfkc")
  path = tmp_path / "cased.model"
  path.write_bytes(proto)
  with pytest.raises(ValueError, match="fold case"):
    SentencePieceTokenizer.load(str(path))


def test_load_rejects_garbage(tmp_path):
  path = tmp_path / "junk.model"
  path.write_bytes(b"not a model")
  with pytest.raises(ValueError, match="junk.model"):
    SentencePieceTokenizer.load(str(path))


@pytest.mark.parametrize("texts", [[], ["", "   ", "\n"]])
def test_empty_corpus_rejected(texts):
  with pytest.raises(ValueError, match="empty corpus"):
    sp_tokenizer.train(iter(texts), VOCAB)


def test_vocab_too_small_rejected():
  with pytest.raises(ValueError, match="vocab_size"):
    sp_tokenizer.train(corpus(), 9)
  with pytest.raises(ValueError, match="required_chars"):
    sp_tokenizer.train(corpus(), 15)  # fewer slots than distinct characters
