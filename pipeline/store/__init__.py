"""The HDF5 store: its layout (``schema.py``), checking it before use (``validate.py``), reading (``read.py``,
``Store``) and writing (``write.py``). Nothing outside this package indexes the HDF5 file itself."""
