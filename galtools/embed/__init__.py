"""gal-embed's library: an ``encoder.onnx`` on ONNX Runtime, fed by a pipelined reader, with no training stack.

    from galtools.embed import EmbedSettings, load_encoder, embed_table
    encoder = load_encoder("run/encoder.onnx", EmbedSettings(device="auto", precision="fp32"))
    with open_table("cutouts.fits") as table, open_output("emb.parquet", metadata=...) as out:
        embed_table(table, encoder, out)

Nothing here imports torch; numpy, pyarrow and onnxruntime do the work (``onnx`` only to convert to fp16 or int8).
"""
from galtools.embed.encoder import EmbedSettings, Encoder, load_encoder
from galtools.embed.inputs import InputPlan
from galtools.embed.model import ModelInfo
from galtools.embed.providers import cpu_allocation
from galtools.embed.table import EmbedStats, embed_table, output_metadata, output_schema

__all__ = ["EmbedSettings", "EmbedStats", "Encoder", "InputPlan", "ModelInfo", "cpu_allocation",
           "embed_table", "load_encoder", "output_metadata", "output_schema"]
