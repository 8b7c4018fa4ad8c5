"""Converters from the public releases (REFER, ReferItGame, Flickr30k Entities, MDETR, gRefCOCO, Visual Genome) and
from your own tables into the index files the loaders read; run through `python -m datasets.build_index`. They
import the loading code (to check what they write), never the other way."""
