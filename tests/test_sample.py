"""sample.py: text from a checkpoint, by characters or GPT-2 BPE, and clear errors for bad prompts."""

import os

import pytest
import tiktoken

from helpers import TIKTOKEN_CACHE, char_data, tiny_config  # noqa: F401 (fixture)
from model import GPT, GPTConfig
from sample import SampleConfig, generate_samples, main
from train import train
from utils import ConfigError, save_checkpoint


@pytest.fixture(scope='module')
def char_ckpt(char_data, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp('out-char')
    train(tiny_config(out, char_data, max_iters=4, eval_interval=4))
    return str(out)


def test_samples_are_characters_of_the_vocabulary(char_ckpt):
    samples = generate_samples(SampleConfig(out_dir=char_ckpt, start='ROMEO:', num_samples=2, max_new_tokens=20,
                                            device='cpu'))
    assert len(samples) == 2
    for s in samples:
        assert s.startswith('ROMEO:') and len(s) == len('ROMEO:') + 20


def test_another_attn_runs_the_same_checkpoint(char_ckpt):
    cfg = SampleConfig(out_dir=char_ckpt, num_samples=1, max_new_tokens=5, device='cpu', attn='naive')
    assert len(generate_samples(cfg)[0]) == 1 + 5


def test_prompt_outside_the_vocabulary_names_the_characters(char_ckpt):
    with pytest.raises(ValueError, match=r"outside the model's 65-character vocabulary: '@', 'é'"):
        generate_samples(SampleConfig(out_dir=char_ckpt, start='to be @ or not é', device='cpu'))


def test_prompt_from_file(char_ckpt, tmp_path):
    (tmp_path / 'prompt.txt').write_text('JULIET:\n')
    cfg = SampleConfig(out_dir=char_ckpt, start=f"FILE:{tmp_path / 'prompt.txt'}", num_samples=1,
                       max_new_tokens=3, device='cpu')
    assert generate_samples(cfg)[0].startswith('JULIET:\n')


def test_cli_prints_samples_and_errors_cleanly(char_ckpt, tmp_path, capsys):
    main([f'--out_dir={char_ckpt}', '--num_samples=2', '--max_new_tokens=4', '--device=cpu'])
    assert capsys.readouterr().out.count('---------------') == 2
    with pytest.raises(SystemExit, match=r"no checkpoint.*train one first"):
        main([f'--out_dir={tmp_path}', '--device=cpu'])


def test_gpt2_bpe_when_the_dataset_has_no_vocabulary(tmp_path, monkeypatch):
    if 'TIKTOKEN_CACHE_DIR' not in os.environ:
        if not TIKTOKEN_CACHE.is_dir():
            pytest.skip("no network-free GPT-2 BPE files: ../shared/tiktoken_cache is absent")
        monkeypatch.setenv('TIKTOKEN_CACHE_DIR', str(TIKTOKEN_CACHE))
    try:
        tiktoken.get_encoding('gpt2')
    except Exception as e:  # e.g. a machine with TIKTOKEN_CACHE_DIR set to a cache without them, and no network
        pytest.skip(f"the GPT-2 BPE files cannot be loaded here ({type(e).__name__})")
    _bpe_checkpoint(tmp_path)
    text = generate_samples(SampleConfig(out_dir=str(tmp_path), start='Hello there', num_samples=1,
                                         max_new_tokens=5, device='cpu', top_k=100))[0]
    assert text.startswith('Hello there')


def test_gpt2_bpe_files_missing_is_a_clear_error(tmp_path, monkeypatch):
    def offline(name):
        raise ConnectionError("no network")

    monkeypatch.setattr(tiktoken, 'get_encoding', offline)
    _bpe_checkpoint(tmp_path)
    with pytest.raises(ConfigError, match="GPT-2 BPE files.*TIKTOKEN_CACHE_DIR"):
        generate_samples(SampleConfig(out_dir=str(tmp_path), start='Hello', max_new_tokens=1, device='cpu'))


def _bpe_checkpoint(out_dir):
    # an untrained BPE-sized model in a checkpoint like train.py's, with no vocabulary inside
    args = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50304, dropout=0.0, bias=True, attn='sdpa')
    model = GPT(GPTConfig(**args))
    save_checkpoint({'model': model.state_dict(), 'optimizer': {}, 'model_args': args, 'iter_num': 0,
                     'best_val_loss': 0.0, 'config': {'dataset': 'shakespeare'}, 'meta': None}, str(out_dir))
