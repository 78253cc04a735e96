"""sample.py: text from a checkpoint (this repo's or nanoGPT's), by characters or GPT-2 BPE; every setting checked
before any work; one-line errors for bad prompts, devices, and data that disagrees with the checkpoint."""

import os
import pickle

import pytest
import tiktoken
import torch

from helpers import TIKTOKEN_CACHE, char_data, tiny_config  # noqa: F401 (fixture)
from model import GPT, GPTConfig
from sample import SampleConfig, generate_samples, main
from train import train
from utils import ConfigError, get_codec, read_meta, save_checkpoint


@pytest.fixture(scope='module')
def char_ckpt(char_data, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp('out-char')
    train(tiny_config(out, char_data, max_iters=4, eval_interval=4))
    return str(out)


def _gpt2_files(monkeypatch):
    if 'TIKTOKEN_CACHE_DIR' not in os.environ:
        if not TIKTOKEN_CACHE.is_dir():
            pytest.skip("no network-free GPT-2 BPE files: a local tiktoken cache is absent")
        monkeypatch.setenv('TIKTOKEN_CACHE_DIR', str(TIKTOKEN_CACHE))
    try:
        tiktoken.get_encoding('gpt2')
    except Exception as e:  # e.g. a machine with TIKTOKEN_CACHE_DIR set to a cache without them, and no network
        pytest.skip(f"the GPT-2 BPE files cannot be loaded here ({type(e).__name__})")


def _error(argv) -> str:
    """What sample.py's command line says for argv: one `error:` line (asserted), returned for the details."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    message = str(e.value.code)
    assert message.startswith('error: ') and '\n' not in message, message
    return message


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
    assert "'@', 'é'" in _error([f'--out_dir={char_ckpt}', '--start=to be @ or not é', '--device=cpu'])


def test_prompt_from_file(char_ckpt, tmp_path):
    (tmp_path / 'prompt.txt').write_text('JULIET:\n')
    cfg = SampleConfig(out_dir=char_ckpt, start=f"FILE:{tmp_path / 'prompt.txt'}", num_samples=1,
                       max_new_tokens=3, device='cpu')
    assert generate_samples(cfg)[0].startswith('JULIET:\n')
    (tmp_path / 'latin1.txt').write_bytes('Roméo'.encode('latin-1'))
    assert 'is not UTF-8 text' in _error([f'--out_dir={char_ckpt}', f"--start=FILE:{tmp_path / 'latin1.txt'}",
                                          '--device=cpu'])


def test_cli_prints_samples_and_errors_cleanly(char_ckpt, tmp_path, capsys):
    main([f'--out_dir={char_ckpt}', '--num_samples=2', '--max_new_tokens=4', '--device=cpu'])
    assert capsys.readouterr().out.count('---------------') == 2
    assert 'train one first' in _error([f'--out_dir={tmp_path}', '--device=cpu'])


@pytest.mark.parametrize('arg,expected', [
    ('--num_samples=0', "num_samples must be >= 1, got 0"),
    ('--max_new_tokens=-5', "max_new_tokens must be >= 1, got -5"),
    ('--temperature=0', "temperature must be a number >= 0.0001, got 0.0"),
    ('--temperature=-1.5', "temperature must be a number >= 0.0001, got -1.5"),
    ('--temperature=1e-300', "temperature must be a number >= 0.0001, got 1e-300"),  # NaN probabilities before
    ('--temperature=inf', "temperature must be a number >= 0.0001, got inf"),
    ('--max_new_tokens=1000000000000', "max_new_tokens must be <= 1,000,000"),  # an 8 TB allocation before
    ('--top_k=-1', "top_k must be >= 0"),
    ('--device=foo', "device must be 'cpu', 'cuda' or 'cuda:N', got 'foo'"),
    ('--device=mps', "device must be 'cpu', 'cuda' or 'cuda:N', got 'mps'"),
    ('--dtype=float16', "dtype='float16' needs a CUDA device"),
    ('--attn=flash', "attn must be one of ('', 'triton', 'sdpa', 'naive'), got 'flash'"),
    ('--num_samples=two', "num_samples expects int"),
    ('--max_new_token=5', "unknown config key 'max_new_token' (on the command line); did you mean 'max_new_tokens'?"),
    ('--seed=18446744073709551616', "seed must be in [0, 2**32), got 18446744073709551616"),
    ('--seed=-1', "seed must be in [0, 2**32), got -1"),
], ids=lambda x: str(x))
def test_bad_settings_are_refused_before_any_work(arg, expected, tmp_path):
    # out_dir has no checkpoint: had the setting not been checked first, the error would be "no checkpoint"
    device = [] if arg.startswith('--device') else ['--device=cpu']
    message = _error([f'--out_dir={tmp_path}', *device, arg])
    assert expected in message, message


def test_cuda_on_a_machine_without_a_gpu_says_so(char_ckpt, monkeypatch):
    """A regression: --device=cuda without a GPU used to end in "checkpoint is corrupt" (torch.load failing)."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    message = _error([f'--out_dir={char_ckpt}', '--device=cuda'])
    assert "device='cuda' but this machine has no CUDA GPU" in message and '--device=cpu' in message
    assert 'corrupt' not in message


def test_a_gpu_index_this_machine_lacks_is_named(char_ckpt, monkeypatch):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    assert "device='cuda:2' but this machine has 2 CUDA GPU(s): use cuda:0 to cuda:1" in _error(
        [f'--out_dir={char_ckpt}', '--device=cuda:2', '--dtype=float32'])


def test_triton_bf16_under_the_interpreter_is_refused(char_ckpt, monkeypatch):
    """As in train.py: the interpreter's bf16 dot products are wrong, so such samples would be garbage."""
    monkeypatch.setenv('TRITON_INTERPRET', '1')
    message = _error([f'--out_dir={char_ckpt}', '--device=cpu', '--attn=triton', '--dtype=bfloat16'])
    assert "attn='triton' with dtype='bfloat16' under TRITON_INTERPRET=1" in message and '--dtype=float32' in message


def test_compile_defaults_to_on_for_a_gpu_device_only(monkeypatch):
    """On a machine with a GPU, --device=cpu must not compile the decode step by default (inductor's C++ build takes
    tens of seconds); an explicit --compile wins either way."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 1)
    assert SampleConfig(device='cuda', dtype='float32').compile is True
    assert SampleConfig(device='cpu').compile is False
    assert SampleConfig(device='cpu', compile=True).compile is True
    assert SampleConfig(device='cuda', dtype='float32', compile=False).compile is False


def test_help_lists_every_setting_with_its_comment(capsys):
    with pytest.raises(SystemExit) as e:
        main(['--help'])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith('Sample from a trained model.')
    out = ' '.join(out.split())  # the column widths follow the longest setting name
    assert "--num_samples=int default 10 how many samples, >= 1" in out
    assert "--temperature=float default 0.8 >= 1e-4: 1.0 = the model's distribution" in out
    assert "--data_dir=str default '' a dataset whose meta.pkl must agree with the checkpoint" in out


# ------------------------------------------------------------------------------------------------------------
# what the tokens mean: the checkpoint's vocabulary, a dataset's meta.pkl, or GPT-2 BPE

def _write_meta(directory, meta) -> str:
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, 'meta.pkl'), 'wb') as f:
        pickle.dump(meta, f)
    return str(directory)


def test_a_dataset_that_agrees_with_the_checkpoint_is_accepted(char_ckpt, char_data):
    cfg = SampleConfig(out_dir=char_ckpt, data_dir=char_data, num_samples=1, max_new_tokens=3, device='cpu')
    assert len(generate_samples(cfg)[0]) == 1 + 3


def test_a_dataset_that_disagrees_with_the_checkpoint_is_refused_naming_both(char_ckpt, char_data, tmp_path):
    meta = read_meta(char_data)
    other = dict(meta, stoi={**meta['stoi'], '§': 65}, itos={**meta['itos'], 65: '§'}, vocab_size=66)
    other_dir = _write_meta(tmp_path / 'other', other)
    message = _error([f'--out_dir={char_ckpt}', f'--data_dir={other_dir}', '--device=cpu'])
    assert (f"the dataset {other_dir}/meta.pkl: characters (66 ids), checkpoint {char_ckpt}/ckpt.pt: characters "
            f"(65 ids); characters only in the dataset {other_dir}/meta.pkl: '§'") in message
    bpe_dir = _write_meta(tmp_path / 'bpe', {'tokenizer': 'gpt2', 'vocab_size': 50257})
    assert f"the dataset {bpe_dir}/meta.pkl: GPT-2 BPE (50257 ids), checkpoint {char_ckpt}/ckpt.pt: characters" in _error(
        [f'--out_dir={char_ckpt}', f'--data_dir={bpe_dir}', '--device=cpu'])
    assert "has no meta.pkl" in _error([f'--out_dir={char_ckpt}', f'--data_dir={tmp_path}', '--device=cpu'])
    (tmp_path / 'junk').mkdir()
    (tmp_path / 'junk' / 'meta.pkl').write_bytes(b'not a pickle')
    assert f"{tmp_path / 'junk' / 'meta.pkl'}" in _error(
        [f'--out_dir={char_ckpt}', f"--data_dir={tmp_path / 'junk'}", '--device=cpu'])


def test_gpt2_bpe_when_the_dataset_has_no_vocabulary(tmp_path, monkeypatch):
    _gpt2_files(monkeypatch)
    _bpe_checkpoint(tmp_path)
    text = generate_samples(SampleConfig(out_dir=str(tmp_path), start='Hello there', num_samples=1,
                                         max_new_tokens=5, device='cpu', top_k=100))[0]
    assert text.startswith('Hello there')


def test_gpt2_padding_ids_decode_as_replacement_characters(monkeypatch):
    """A model's 50304 ids pad GPT-2's 50257: an untrained model can sample one, which must not crash tiktoken."""
    _gpt2_files(monkeypatch)
    encode, decode = get_codec({'tokenizer': 'gpt2', 'vocab_size': 50257})
    ids = encode('Hello there')
    assert decode(ids + [50257, 50303] + ids) == 'Hello there\ufffd\ufffdHello there'


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


# ------------------------------------------------------------------------------------------------------------
# checkpoints written by nanoGPT's train.py

NANO_ARGS = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, bias=False, vocab_size=65, dropout=0.1)


def _char_meta(n: int) -> dict:
    """A character vocabulary of n characters, as nanoGPT's prepare.py writes it (no 'tokenizer' key)."""
    return {'vocab_size': n, 'stoi': {chr(48 + i): i for i in range(n)}, 'itos': {i: chr(48 + i) for i in range(n)}}


def _nanogpt_checkpoint(out_dir, model: GPT, dataset: str, old_torch: bool = False) -> None:
    """A checkpoint laid out as nanoGPT's train.py saves one. Its raw_model is the torch.compile'd module, so each
    weight is named _orig_mod.<name>; its model_args are the seven below, with no 'attn'; best_val_loss is a
    tensor (its estimate_loss returns tensors); config is the script's settings, no data_dir; no 'meta' key.
    On a torch without flash attention (old_torch) its attention keeps the causal mask as a buffer attn.bias."""
    model_args = {k: getattr(model.config, k) for k in NANO_ARGS}
    state = {f'_orig_mod.{k}': v for k, v in model.state_dict().items()}
    if old_torch:
        T = model_args['block_size']
        for i in range(model_args['n_layer']):
            state[f'_orig_mod.transformer.h.{i}.attn.bias'] = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99))
    os.makedirs(out_dir, exist_ok=True)
    torch.save({
        'model': state,
        'optimizer': optimizer.state_dict(),
        'model_args': model_args,
        'iter_num': 250,
        'best_val_loss': torch.tensor(2.08),
        'config': {'out_dir': str(out_dir), 'eval_interval': 250, 'dataset': dataset, 'batch_size': 64,
                   'block_size': model_args['block_size'], 'n_layer': model_args['n_layer'], 'compile': True,
                   'init_from': 'scratch', 'learning_rate': 1e-3, 'device': 'cuda', 'dtype': 'bfloat16'},
    }, os.path.join(out_dir, 'ckpt.pt'))


@pytest.mark.parametrize('old_torch', [False, True], ids=['torch2', 'mask_buffers'])
def test_a_nanogpt_checkpoint_samples_like_the_same_weights_saved_here(old_torch, char_data, tmp_path):
    """A regression: a nanoGPT checkpoint ended in KeyError: 'attn'. Its samples must be exactly those of the same
    weights in this repo's own checkpoint format, which shows the weights, not a fresh model, were loaded."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**NANO_ARGS, attn='sdpa'))
    meta = read_meta(char_data)
    nano_meta = {k: meta[k] for k in ('vocab_size', 'itos', 'stoi')}  # nanoGPT's meta.pkl: no 'tokenizer' key
    nano_data = _write_meta(tmp_path / 'nanoGPT' / 'data' / 'shakespeare_char', nano_meta)
    _nanogpt_checkpoint(tmp_path / 'nano', model, dataset='shakespeare_char', old_torch=old_torch)
    save_checkpoint({'model': model.state_dict(), 'optimizer': {}, 'model_args': {**NANO_ARGS, 'attn': 'sdpa'},
                     'iter_num': 250, 'best_val_loss': 2.08, 'config': {'dataset': 'shakespeare_char'},
                     'meta': meta}, str(tmp_path / 'ours'))

    settings = dict(start='ROMEO:', num_samples=2, max_new_tokens=12, device='cpu', seed=7)
    nano = generate_samples(SampleConfig(out_dir=str(tmp_path / 'nano'), data_dir=nano_data, **settings))
    ours = generate_samples(SampleConfig(out_dir=str(tmp_path / 'ours'), **settings))
    assert nano == ours
    assert all(s.startswith('ROMEO:') and len(s) == len('ROMEO:') + 12 for s in nano)


def test_a_nanogpt_checkpoint_without_its_vocabulary_is_refused_naming_both(tmp_path):
    """Without a meta.pkl the tokens would be read as GPT-2 BPE, which a 65-token model cannot be: say so."""
    _nanogpt_checkpoint(tmp_path / 'nano', GPT(GPTConfig(**NANO_ARGS)), dataset='no_such_dataset')
    message = _error([f"--out_dir={tmp_path / 'nano'}", '--device=cpu'])
    assert "means GPT-2 BPE (50257 token ids" in message and "has only 65" in message and '--data_dir' in message
    other = _write_meta(tmp_path / 'data70', _char_meta(70))
    message = _error([f"--out_dir={tmp_path / 'nano'}", f'--data_dir={other}', '--device=cpu'])
    assert f"{other}/meta.pkl has 70 characters and the model in {tmp_path / 'nano'}/ckpt.pt has 65" in message


def test_a_nanogpt_gpt2_checkpoint_is_gpt2_bpe(tmp_path, monkeypatch):
    """nanoGPT's OpenWebText / GPT-2 runs have no meta.pkl anywhere: GPT-2 BPE."""
    _gpt2_files(monkeypatch)
    _nanogpt_checkpoint(tmp_path, GPT(GPTConfig(**dict(NANO_ARGS, vocab_size=50304))), dataset='openwebtext')
    text = generate_samples(SampleConfig(out_dir=str(tmp_path), start='Hello', num_samples=1, max_new_tokens=3,
                                         device='cpu'))[0]
    assert text.startswith('Hello')


def test_a_checkpoint_whose_weights_do_not_fit_is_one_line(tmp_path):
    _nanogpt_checkpoint(tmp_path, GPT(GPTConfig(**NANO_ARGS)), dataset='no_such_dataset')
    ckpt = torch.load(tmp_path / 'ckpt.pt', weights_only=True)
    ckpt['model_args']['n_embd'] = 64  # the weights are 32 wide
    ckpt['meta'] = _char_meta(NANO_ARGS['vocab_size'])
    torch.save(ckpt, tmp_path / 'ckpt.pt')
    message = _error([f'--out_dir={tmp_path}', '--device=cpu', '--start=0'])
    assert f"checkpoint {tmp_path}/ckpt.pt does not hold a model this repo can build (RuntimeError: " in message


def test_a_prompt_file_that_is_a_directory_is_named(char_ckpt, tmp_path):
    message = _error([f'--out_dir={char_ckpt}', '--device=cpu', f'--start=FILE:{tmp_path}'])
    assert f"prompt file '{tmp_path}' (from start=FILE:...) is a directory" in message


def _with_meta(ckpt_dir, tmp_path, meta) -> str:
    """A copy of the checkpoint in ckpt_dir whose own vocabulary is meta; returns its directory."""
    ckpt = torch.load(os.path.join(ckpt_dir, 'ckpt.pt'), weights_only=True)
    ckpt['meta'] = meta
    torch.save(ckpt, tmp_path / 'ckpt.pt')
    return str(tmp_path)


def test_a_checkpoint_with_a_damaged_vocabulary_is_refused(char_ckpt, tmp_path):
    """Regression: a character checkpoint whose meta lost its stoi table ended in KeyError: 'stoi'."""
    meta = torch.load(os.path.join(char_ckpt, 'ckpt.pt'), weights_only=True)['meta']
    out = _with_meta(char_ckpt, tmp_path, {k: v for k, v in meta.items() if k != 'stoi'})
    message = _error([f'--out_dir={out}', '--device=cpu'])
    assert "carries a damaged vocabulary (a character vocabulary without its stoi and itos tables)" in message


def test_a_checkpoint_whose_vocabulary_does_not_fit_its_model_is_not_sent_to_data_dir(char_ckpt, tmp_path):
    """Regression: the advice was to point --data_dir at the dataset, which then failed with 'leave it out'. A
    checkpoint's own vocabulary cannot be replaced by a dataset's: it is the checkpoint that is damaged."""
    chars = 'abc'
    meta = {'tokenizer': 'char', 'vocab_size': 3, 'stoi': {c: i for i, c in enumerate(chars)},
            'itos': dict(enumerate(chars))}
    message = _error([f'--out_dir={_with_meta(char_ckpt, tmp_path, meta)}', '--device=cpu'])
    assert "has 3 characters and the model in" in message and "the checkpoint is damaged" in message
    assert '--data_dir' not in message


def test_a_hugging_face_directory_given_as_out_dir_says_init_from(tmp_path):
    """Regression: it said "no checkpoint ... train one first"."""
    for name in ('config.json', 'model.safetensors'):
        (tmp_path / name).write_text('{}')
    message = _error([f'--out_dir={tmp_path}', '--device=cpu'])
    assert f"{tmp_path} is a Hugging Face GPT-2 directory, not a training out_dir (no ckpt.pt): load it with " \
           f"--init_from={tmp_path}" in message


def test_a_prompt_from_a_file_that_is_not_regular_is_read(char_ckpt):
    """Regression: FILE:/dev/null (and /dev/stdin, a shell's <(...)) said "not found"; /dev/null is an empty prompt."""
    assert "the prompt is empty" in _error([f'--out_dir={char_ckpt}', '--device=cpu', '--start=FILE:/dev/null'])


def test_a_prompt_longer_than_the_context_says_what_the_model_sees(char_ckpt, capsys):
    """Regression: a prompt longer than block_size was cut to its last block_size tokens without a word."""
    prompt = 'ROMEO:\n' * 5  # 35 characters; tiny_config's block_size is 16
    sample = generate_samples(SampleConfig(out_dir=char_ckpt, start=prompt, num_samples=1, max_new_tokens=3,
                                           device='cpu'))[0]
    assert sample.startswith(prompt) and len(sample) == len(prompt) + 3
    assert "note: the prompt is 35 tokens and the model's context 16: it continues from the prompt's last 16" in \
        capsys.readouterr().err


def test_an_out_dir_that_is_a_file_or_empty_is_named(tmp_path):
    """Regression: --out_dir=FILE said "no checkpoint at FILE/ckpt.pt", and --out_dir= suggested --out_dir=."""
    (tmp_path / 'notes.txt').write_text('not a directory')
    assert "is a file, not a directory: point --out_dir at the directory that has ckpt.pt" in \
        _error([f"--out_dir={tmp_path / 'notes.txt'}", '--device=cpu'])
    assert "out_dir is empty: point --out_dir at the directory that has ckpt.pt" in _error(['--out_dir=', '--device=cpu'])


def test_running_out_of_memory_is_one_line(char_ckpt, monkeypatch):
    """Regression: sample.py printed a traceback where train.py gives one line."""
    import sample

    def no_memory(*args, **kwargs):  # what torch's CPU allocator raises
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1048576 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(sample, 'generate_samples', no_memory)
    message = _error([f'--out_dir={char_ckpt}', '--device=cpu'])
    assert message.startswith("error: the CPU ran out of memory (") and "lower --max_new_tokens" in message


def test_ctrl_c_is_one_line(char_ckpt, monkeypatch):
    """Regression: Ctrl-C while sampling printed a traceback."""
    import sample

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample, 'generate_samples', interrupted)
    with pytest.raises(SystemExit) as stop:
        main([f'--out_dir={char_ckpt}', '--device=cpu'])
    assert stop.value.code == "interrupted: no sample was printed"
