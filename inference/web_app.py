"""The browser demo's page (Gradio): an image and phrases in; boxes and masks drawn, a table, files to download.
The work of a request is inference.app_request's; this module lays out the page and wires it."""
import re
import shutil
import tempfile
from itertools import count
from pathlib import Path

import gradio as gr
import pandas as pd

from evaluation.mask_refine import REFINEMENTS
from inference.app_request import MAX_PHRASES, TABLE_HEADERS, RequestError, ground

KEEP_REQUESTS = 16  # request folders kept on disk for their downloads; older ones are deleted
UPLOAD_SOURCES = ["upload", "clipboard", "webcam"]


def keep_unreadable_uploads(image):
    """Make gr.Image hand over an uploaded file that PIL cannot open, as it is, so that the request answers a corrupt
    file with its own message instead of a bare "Error". (An instance attribute rather than a subclass: Gradio writes
    a .pyi stub next to the module of every component subclass.)"""
    preprocess = image.preprocess

    def tolerant(payload):
        try:
            return preprocess(payload)
        except Exception:  # noqa: BLE001 (PIL raises many kinds; inference.app_request says what was wrong)
            return str(payload.path) if payload is not None and payload.path else None

    image.preprocess = tolerant
    return image


class RequestFolders:
    """A new folder per request under one temporary folder; only the last KEEP_REQUESTS are kept."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="segvg_app_"))
        self.counter = count()

    def new(self):
        number = next(self.counter)
        stale = self.root / f"request_{number - KEEP_REQUESTS:06d}"
        if number >= KEEP_REQUESTS and stale.exists():
            shutil.rmtree(stale, ignore_errors=True)
        return self.root / f"request_{number:06d}"


MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+\-.!|~])")


def literal(text):
    """text as Markdown that shows it as typed: its Markdown punctuation escaped, its HTML turned into entities (a
    phrase or a file name holding "<img ...>" or "[a](b)" is shown, not rendered)."""
    escaped = MARKDOWN_PUNCTUATION.sub(r"\\\1", str(text))
    return escaped.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def status_text(header, notes=(), error=None):
    """The status Markdown: the page's header, then the request's notes or its error, which hold what the user typed
    or uploaded (phrases, file names): shown literally."""
    lines = [header] + [f"- {literal(note)}" for note in notes]
    if error:
        lines.insert(0, f"**Error:** {literal(error)}")
    return "\n".join(lines)


def build_app(predictor, checkpoint_name, examples=(), mask_refine="none", max_queue=64):
    """predictor: inference.predictor.SegVGPredictor; checkpoint_name: what the page calls the model (a file name: the
    server's folders are nobody's business); examples: [image path, phrase] pairs shown under the inputs;
    mask_refine: the page's initial mask refinement (evaluation.mask_refine); max_queue: requests that may wait.

    The API (gradio_client, docs/app.md): /ground(image, phrases, mask_threshold, show_masks, mask_refine) ->
    (drawing, table of phrase, x1, y1, x2, y2, score, files, status)."""
    folders = RequestFolders()
    header = f"checkpoint `{checkpoint_name}` on {predictor.device.type}"

    def answer(image, phrases, mask_threshold, show_masks, refine="none"):
        empty = pd.DataFrame(columns=TABLE_HEADERS)
        try:
            out = ground(predictor, image, phrases, mask_threshold, show_masks, folders.new(), refine)
        except RequestError as err:
            return None, empty, None, status_text(header, error=str(err))
        timing = f"{header} · {1000 * out['seconds']:.0f} ms for {len(out['rows'])} phrase(s)"
        return out["image"], pd.DataFrame(out["rows"], columns=TABLE_HEADERS), out["files"], status_text(
            timing, out["notes"])

    with gr.Blocks(title="SegVG grounding demo", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown("## SegVG: find the object a phrase refers to\nUpload an image, type one or more referring "
                    f"expressions (one per line, at most {MAX_PHRASES}) and press **Ground**.")
        with gr.Row():
            with gr.Column():
                image = keep_unreadable_uploads(gr.Image(label="Image", type="filepath", image_mode=None,
                                                         sources=UPLOAD_SOURCES, elem_id="image"))
                phrases = gr.Textbox(label="Phrases, one per line", lines=3, placeholder="the man on the left",
                                     elem_id="phrases")
                with gr.Accordion("Advanced", open=False):
                    threshold = gr.Slider(0, 1, value=predictor.mask_threshold, step=0.05, label="Mask threshold",
                                          info="probability above which a pixel belongs to the mask")
                    show_masks = gr.Checkbox(value=True, label="Show masks")
                    refine = gr.Radio(list(REFINEMENTS), value=mask_refine, label="Mask refinement",
                                      info="grabcut: OpenCV's GrabCut from the box and the model's map "
                                           "(no training; a few ms to tens of ms per phrase)")
                button = gr.Button("Ground", variant="primary", elem_id="ground")
                if examples:
                    gr.Examples([list(e) for e in examples], inputs=[image, phrases], label="Examples (demo test split)")
            with gr.Column():
                drawing = gr.Image(label="Result", type="pil", format="png", interactive=False, elem_id="result")
                status = gr.Markdown(header, elem_id="status")
                table = gr.Dataframe(pd.DataFrame(columns=TABLE_HEADERS), label="Boxes (image pixels)",
                                     datatype=["str"] + ["number"] * 5, interactive=False, elem_id="table")
                files = gr.File(label="Masks and prediction records", file_count="multiple", interactive=False,
                                elem_id="files")
        button.click(answer, [image, phrases, threshold, show_masks, refine], [drawing, table, files, status],
                     api_name="ground")
    # One request at a time: a second waits in the queue instead of competing for the same cores or GPU memory; a
    # full queue answers "Queue is full" at once, in the page and to API callers.
    app.queue(default_concurrency_limit=1, max_size=max_queue)
    return app
