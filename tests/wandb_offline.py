"""What a real `wandb` run in offline mode (WANDB_MODE=offline) wrote to disk, read back for tests.

An offline run is a directory WANDB_DIR/wandb/offline-run-<time>-<id>/ holding run-<id>.wandb: the run's records
(its name, group and project, config, logged history, summary) as protobuf `Record`s from wandb's own
`wandb.proto.wandb_internal_pb2`, framed in the LevelDB log format (a 7-byte file header ':W&B' + magic + version,
then 32 KiB blocks of chunks, each a 7-byte header: crc32, length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4).
wandb's Python package no longer ships a reader for that framing (its Go core reads it), so it is unpacked here;
the records themselves are parsed by wandb's protobuf classes. Media (tables, images) are files beside it.
"""

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b':W&B', f"{path} is not a W&B run file"
    records, pending, pos = [], b'', 7  # the file header takes the first 7 bytes of the first block
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:  # a block's tail too short for a header is zero padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack('<IHB', data[pos:pos + CHUNK_HEADER])
        if kind == 0:  # zero padding up to the block's end
            pos += left_in_block
            continue
        pending += data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b''
    return records


def _items(updates) -> dict:
    """A summary update's or history row's items as {'a/b': value}."""
    return {'/'.join(item.nested_key) or item.key: json.loads(item.value_json) for item in updates}


def read_offline_runs(wandb_dir: Path) -> list[dict]:
    """Each offline run under wandb_dir: {'dir', 'name', 'group', 'project', 'job_type', 'config', 'history'
    (one dict per logged step), 'summary' (the last value of each key)}."""
    runs = []
    for run_file in sorted(Path(wandb_dir).glob('wandb/offline-run-*/run-*.wandb')):
        run = {'dir': run_file.parent, 'config': {}, 'history': [], 'summary': {}}
        for record in _records(run_file):
            kind = record.WhichOneof('record_type')
            if kind == 'run':
                r = record.run
                run.update(name=r.display_name, group=r.run_group, project=r.project, job_type=r.job_type)
                run['config'].update({item.key: json.loads(item.value_json) for item in r.config.update})
            elif kind == 'config':  # changes after wandb.init
                run['config'].update({item.key: json.loads(item.value_json) for item in record.config.update})
            elif kind == 'history':
                run['history'].append(_items(record.history.item))
            elif kind == 'summary':
                run['summary'].update(_items(record.summary.update))
        runs.append(run)
    return runs
