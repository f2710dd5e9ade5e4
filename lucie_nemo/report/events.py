"""Every scalar of a run's TensorBoard event files, read strictly (a corrupt file is an error)."""

from __future__ import annotations

from pathlib import Path

from lucie_nemo.errors import UserError

Scalars = dict[str, dict[int, float]]  # tag -> step -> value


def _records(path: Path):
    """The raw records of one event file. TensorBoard's own loader stops silently at a bad record;
    its record reader raises, and tells a torn last record (a file being written) from a bad checksum."""
    from tensorboard.compat.tensorflow_stub import errors
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New

    reader = PyRecordReader_New(str(path).encode())
    while True:
        try:
            reader.GetNext()
        except errors.OutOfRangeError:
            return
        except errors.DataLossError as error:
            if "truncated" in str(error).lower():
                return  # the writer is still appending to this file
            raise UserError(f"corrupt TensorBoard event file {path} (a record fails its checksum): move it out "
                            "of the run folder and run the report again") from None
        yield reader.record()


def read_scalars(folder: Path) -> Scalars:
    """Scalars over every event file of ``folder``, oldest first (a resumed run starts a new file and
    its values replace those of steps logged again)."""
    from tensorboard.compat.proto.event_pb2 import Event

    scalars: Scalars = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for record in _records(path):
            event = Event()
            try:
                event.ParseFromString(record)
            except Exception:  # protobuf's DecodeError; its type moves between protobuf versions
                raise UserError(f"corrupt TensorBoard event file {path} (an undecodable record): move it out of "
                                "the run folder and run the report again") from None
            for value in event.summary.value:
                if value.WhichOneof("value") == "simple_value":  # what Megatron's SummaryWriter writes
                    scalars.setdefault(value.tag, {})[event.step] = float(value.simple_value)
    return scalars
