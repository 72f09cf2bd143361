"""The HDF5 store layout, version 1 (docs/store.md documents it for h5py users).

    /                      attrs: format="mine-store", schema_version, status, model,
                           weights, weights_hash, preprocessing (JSON), k, input_size,
                           images_spec, layers (JSON list), versions (JSON),
                           (preprocessing: mode torchvision | caffe, size, resize;
                           mode custom adds channels 1 | 3, mean and std per
                           channel on pixels in [0, 1]; /kept/pixels stay RGB,
                           grey for one channel)
                           created, images_seen, images_skipped, images_duplicate, seconds,
                           inputs_id (sha256 of the configuration, the image
                           list and, for --update/merge, the input stores: equal
                           ids mean equal results; lets a resumed job see that
                           its store was already written)
    /images/path           (N,) str   source path relative to images_root attr
    /images/sha256         (N,) str   content hash
    /images/key            (N,) int64 stable image id (from the hash)
    /images/status         (N,) str   "ok", "duplicate", or "skipped: <reason>"
    /images/width, height  (N,) int32 original size (0 when unreadable)
    /images/size, mtime_ns, ctime_ns  (N,) int64 the file when listed, before it was read
                           (bytes, ns): ``--update`` does not read a file whose three
                           values match; -1 unknown (array items, resumed rows,
                           jobs/update.py). Optional: older stores have none
    /images/label          (N,) str   only for an array/Dataset source with labels (.npz
                           ``labels``, MNIST's labels file, a Dataset's (image, label)
                           items): the item's label, "" where unknown; ``mine embed``'s
                           categories when no --labels is given
    /images/pooled_<L>     (N, 2, C) float16, only with ``mine run --pooled L`` (attr
                           ``pooled`` lists them): spatial mean and max per image, NaN
                           for skipped files
    /embed/<L>             (N, 2) float32, written by ``mine embed``: map coordinates
    /kept/image            (M,) int64 row in /images of each kept (distinct) image
    /kept/key              (M,) int64
    /kept/pixels           (M, S, S, 3) uint8 network input before normalisation, RGB
    /switches/<pool>       (M, C, Ho, Wo) uint8 max-pool winner offset dy*kernel+dx
                           attrs kernel, stride, padding, dilation
    /layers/<name>         attrs module (qualified module path), kind, channels, rf, stride,
                           padding, out_size; decoder layers also period, box_lo, box_hi
                           (boxes repeat every period units, stride pixels on; unit
                           q*period + r sees [q*stride + box_lo[r], q*stride + box_hi[r]):
                           models/geometry.py)
    /layers/<name>/value   (C, k) float32, NaN where the slot is empty
    /layers/<name>/kept    (C, k) int64 row in /kept, -1 where empty
    /layers/<name>/key     (C, k) int64 image key, -1 where empty
    /layers/<name>/y, x    (C, k) int32 arg-max position in the layer's map, -1 empty
    /layers/<name>/box     (C, k, 4) int32 receptive field [top, left, bottom, right)
                           in input pixels, clipped, bottom/right exclusive; -1 empty
    /layers/<name>/hist    (C, 773) int64 the activations of every image at the
                           grid positions (see /stats) counted into fixed bins (mining/stats.py); attr edges (774,)
                           float64, the bin boundaries in value order
    /layers/<name>/fires   (C,) int64 images whose spatial maximum is > 0
    /stats                 attrs images (counted), bins_version (3: hist counts the
                           positions of a grid of at most grid x grid per map, see
                           mining.stats), per_octave, min_exp, max_exp, grid
    (/stats, hist and fires are absent in stores written before mine kept unit
    statistics, and in updates/merges of such stores)

Numeric datasets stored uncompressed (/images key/width/height, /kept image/key,
/layers/*) carry HDF5's fletcher32 checksum; ``validate.py`` checks all of the
above whenever a store is opened.

Only /images grows with the number of images mined; everything else is bounded by
layers x channels x k (or x bins).
"""

# --- the names of the layout: store/ (read.py, write.py) is the one place that opens them; nothing
# outside store/ indexes the HDF5 file (tests/test_architecture.py) ----------------------------
IMAGES = "images"  # group: the per-file columns, /images/<column>
KEPT_IMAGE, KEPT_KEY, KEPT_PIXELS = "kept/image", "kept/key", "kept/pixels"
SWITCHES = "switches"  # group: /switches/<pool>
LAYERS = "layers"  # group: /layers/<name>/<array>
STATS = "stats"  # group: attributes of the unit statistics
HIST, FIRES = "hist", "fires"  # a layer's unit statistics: /layers/<name>/hist, /layers/<name>/fires
EMBED = "embed"  # group: /embed/<L>, written by ``mine embed``
POOLED = "pooled_"  # /images/pooled_<L>: the column of a layer's pooled vectors


def column(name: str) -> str:
    """The path of the /images column ``name`` (``path``, ``status``, ``pooled_conv5_3``, ...)."""
    return f"{IMAGES}/{name}"


def pooled_column(layer: str) -> str:
    """The /images column name of ``layer``'s pooled vectors."""
    return f"{POOLED}{layer}"


FORMAT = "mine-store"
SCHEMA_VERSION = 1
COMPLETE = "complete"
IN_PROGRESS = "in-progress"


def as_str(v) -> str:
    """A string read from the store: h5py returns variable-length strings as ``bytes``."""
    return v.decode() if isinstance(v, bytes) else str(v)


class StoreError(Exception):
    """A store file is missing, corrupt, incomplete or of another format."""
