"""Named exceptions of the extractor. The CLI turns any HeadstartError into `Error: <message>`.

The library never prints errors or exits: it raises one of these with a message that names
the file or setting at fault and, where there is one, the way out.
"""


class HeadstartError(Exception):
    """Base of every error headstart reports to a user (no traceback, exit code 1)."""


class SettingError(HeadstartError):
    """A setting that cannot work (unknown device, image too small...). Raised before any work."""


class InputError(HeadstartError):
    """The input folder is missing, not a folder, or holds no images."""


class WeightsUnavailableError(HeadstartError):
    """The backbone weights could not be had (no network for ImageNet, unreadable weights file)."""


class NetworkRunError(HeadstartError):
    """The network failed on a batch (an ONNX file from elsewhere that needs more memory for
    a full batch than for the probe's, say)."""


class ProviderUnavailableError(HeadstartError):
    """The ONNX Runtime execution provider asked for cannot run on this machine."""


class StoreError(HeadstartError):
    """The feature store folder cannot be used as asked (corrupt part, foreign files...)."""


class StoreLockedError(StoreError):
    """Another headstart process is writing to the same feature store."""


class FingerprintMismatchError(StoreError):
    """The store was made with another extractor; mixing features from two extractors is refused."""


class OutputError(HeadstartError):
    """A file or folder headstart writes cannot be written (disk full, read-only, ...).
    `hdf5_cut_short`: an HDF5 file (a Keras checkpoint) may have been cut short, which the
    HDF5 library cannot close at exit without crashing the process."""

    hdf5_cut_short = False


class UnsafeOutputError(OutputError):
    """A symbolic link, device or foreign entry sits where headstart would write or remove."""


class OutputLockedError(OutputError):
    """Another headstart process is writing the same output (a train-cnn work folder...)."""
