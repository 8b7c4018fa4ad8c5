"""The training flags (train.py's parser), flags files (`@file`) and which flags a command line set explicitly.

Flag names and defaults are the original repository's, except where docs/differences.md says otherwise: the
defaults give the paper's configuration (docs/original.md)."""
import argparse
import shlex

from utils.lr_scheduler import SCHEDULERS

AMP_CHOICES = ("off", "bf16", "fp16")


class FlagsFileParser(argparse.ArgumentParser):
    """ArgumentParser reading `@file` arguments: one or more flags per line, `#` lines skipped."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("fromfile_prefix_chars", "@")
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def convert_arg_line_to_args(self, arg_line):
        line = arg_line.strip()
        return [] if not line or line.startswith("#") else shlex.split(line)


def add_tokenizer_flags(parser):
    """--bert_model / --vocab_file of the scripts that load a checkpoint (an official one needs a tokenizer)."""
    parser.add_argument("--bert_model", help="tokenizer of an official checkpoint: hub name or local BERT folder "
                                             "(default: the shipped bert-base-uncased vocabulary)")
    parser.add_argument("--vocab_file", help="WordPiece vocab.txt overriding the checkpoint's")


def add_backend_flags(parser, cpu_only=False):
    """--backend / --onnx: PyTorch, or ONNX Runtime on an export of tools/export_onnx.py (docs/onnx.md)."""
    where = " on the CPU" if cpu_only else ""
    parser.add_argument("--backend", default="pytorch", choices=["pytorch", "onnxruntime"],
                        help=f"what runs the network: PyTorch, or ONNX Runtime{where} on the --onnx export")
    parser.add_argument("--onnx", help="with --backend onnxruntime: the .onnx file of tools/export_onnx.py")


def add_exif_flag(parser):
    """--exif of predict.py and app.py."""
    parser.add_argument("--exif", default="apply", choices=["apply", "ignore"],
                        help="apply: read each photo as viewers show it, turned as its EXIF orientation tag says "
                             "(boxes, masks and image_size refer to that); ignore: the pixels as stored; a prediction "
                             "record says which was used when the tag was not 1 (docs/evaluation.md, \"Photo "
                             "orientation\")")


def model_flags():
    """Names of the flags that define the model (the "model: ..." groups): what a --pretrained checkpoint sets."""
    parser = build_training_parser()
    return {action.dest for group in parser._action_groups if group.title.startswith("model")
            for action in group._group_actions}


def explicit_flags(parser, argv):
    """Names (dests) of the options actually given in argv: argparse fills defaults only for absent attributes."""
    unset = object()
    namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != "help"})
    parser.parse_args(argv, namespace=namespace)
    return {k for k, v in vars(namespace).items() if v is not unset}


def build_training_parser():
    parser = FlagsFileParser(prog="train.py", description="Train SegVG (defaults: the paper's configuration).",
                             epilog="Flags can also come from a file: python train.py @tools/demo_flags.txt ...")
    _add_model_flags(parser)
    _add_data_flags(parser)
    _add_augmentation_flags(parser)
    _add_loss_flags(parser)
    _add_optimisation_flags(parser)
    _add_checkpoint_flags(parser)
    _add_distributed_flags(parser)
    _add_speed_flags(parser)
    return parser


def training_defaults():
    """The training configuration with every flag at its default (what a checkpoint's configuration completes)."""
    return build_training_parser().parse_args([])


def _add_model_flags(parser):
    visual = parser.add_argument_group("model: visual branch")
    visual.add_argument("--backbone", default="resnet101", choices=["resnet18", "resnet34", "resnet50", "resnet101"],
                        help="torchvision ResNet of the visual branch")
    visual.add_argument("--backbone_norm", default="frozen", choices=["frozen", "batch", "group"],
                        help="ResNet normalisation: frozen statistics (pretrained) or trainable (from scratch)")
    visual.add_argument("--backbone_stride", default=32, type=int, choices=[32, 16, 8],
                        help="16 / 8: stop the ResNet after layer3 / layer2 (a finer grid; for small images trained "
                             "from scratch)")
    visual.add_argument("--train_stem", action="store_true",
                        help="also train the ResNet stem and layer1 (frozen in the original)")
    visual.add_argument("--zero_init_residual", action="store_true",
                        help="start each residual block's last BatchNorm scale at zero, so that every block starts as "
                             "the identity (Goyal et al. 2017; for a ResNet trained from scratch; docs/demo.md)")
    visual.add_argument("--position_embedding", default="sine", choices=["sine", "learned"],
                        help="position encoding of the visual tokens")
    visual.add_argument("--enc_layers", default=6, type=int,
                        help="DETR encoder layers = number of Triple Alignment stages")
    visual.add_argument("--dim_feedforward", default=2048, type=int, help="FFN width of the DETR encoder layers")
    visual.add_argument("--hidden_dim", default=256, type=int, help="width of the DETR encoder")
    visual.add_argument("--dropout", default=0.1, type=float, help="dropout of the DETR encoder layers")
    visual.add_argument("--nheads", default=8, type=int, help="attention heads of the DETR encoder")
    visual.add_argument("--pre_norm", action="store_true", help="pre-norm DETR encoder layers (the original: post)")
    visual.add_argument("--imsize", default=640, type=int, help="side of the square input canvas in pixels")

    text = parser.add_argument_group("model: text branch")
    text.add_argument("--bert_model", default="bert-base-uncased",
                      help="BERT to start from and tokenize with: a Hugging Face hub name or a local folder "
                           "(config.json, weights, vocab.txt); bert-base-uncased's vocabulary ships with the project")
    text.add_argument("--bert_init", default="pretrained", choices=["pretrained", "random"],
                      help="random: build BERT from the --bert_* sizes below without any download")
    text.add_argument("--bert_layers", default=12, type=int, help="layers of a random BERT")
    text.add_argument("--bert_hidden_dim", default=768, type=int, help="width of a random BERT")
    text.add_argument("--bert_heads", default=12, type=int, help="attention heads of a random BERT")
    text.add_argument("--bert_ffn", default=3072, type=int, help="FFN width of a random BERT")
    text.add_argument("--bert_vocab_size", default=30522, type=int,
                      help="embedding rows of a random BERT (set to the tokenizer's vocabulary size at training)")
    text.add_argument("--bert_dropout", default=0.1, type=float,
                      help="dropout of a random BERT (a pretrained one keeps its config's)")
    text.add_argument("--vocab_file", default="", help="WordPiece vocab.txt to tokenize with instead of --bert_model's")
    text.add_argument("--max_query_len", default=40, type=int, help="text length in tokens, [CLS] and [SEP] included")

    fusion = parser.add_argument_group("model: vision-language encoder, decoder and heads")
    fusion.add_argument("--vl_dropout", default=0.1, type=float, help="dropout of the VL encoder and decoder")
    fusion.add_argument("--vl_nheads", default=8, type=int, help="attention heads of the VL encoder and decoder")
    fusion.add_argument("--vl_hidden_dim", default=256, type=int, help="width of the VL encoder and decoder")
    fusion.add_argument("--vl_dim_feedforward", default=2048, type=int, help="FFN width of the VL encoder and decoder")
    fusion.add_argument("--vl_enc_layers", default=6, type=int, help="layers of the VL encoder")
    fusion.add_argument("--vl_dec_layers", default=6, type=int, help="layers of the query decoder (each predicts)")
    fusion.add_argument("--num_seg_queries", default=5, type=int, help="segmentation query tokens")
    fusion.add_argument("--mask_head", default="grid", choices=["grid", "fine"],
                        help="the model's mask: grid = the original's MLP on the visual tokens (stride of the backbone), "
                             "fine = a convolutional head fusing the ResNet's finer maps up to --mask_stride "
                             "(docs/model.md, \"Mask heads\")")
    fusion.add_argument("--mask_stride", default=0, type=int, choices=[0, 1, 2, 4, 8, 16],
                        help="fine head: stride of its map on the canvas (0: 4 for canvases of 320 px and more, else 2)")
    fusion.add_argument("--presence_head", action="store_true",
                        help="a small MLP on the regression token's last state says whether the phrase's object is in "
                             "the image at all (trained on phrases with no target; docs/generalized.md); off: the "
                             "original model")
    fusion.add_argument("--drop_key", default=0.0, type=float,
                        help="real DropKey rate in the custom attentions (training only; the original's is a no-op)")


def _add_data_flags(parser):
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="unc",
                      help="unc (RefCOCO), unc+ (RefCOCO+), gref / gref_umd (RefCOCOg), referit, flickr, the built-in "
                           "synthetic demo, or the name of your own dataset: <split_root>/NAME/NAME_<split>.jsonl "
                           "(docs/custom_data.md); several, comma-separated, train on their union (docs/training.md, "
                           "\"Several datasets\")")
    data.add_argument("--dataset_ratios", default="",
                      help="with several --dataset: each dataset's share of the training samples drawn, e.g. 1,1,2 "
                           "(normalised; default: in proportion to their sizes); an epoch stays as long as the mix")
    data.add_argument("--holdout_images", default="",
                      help="with several --dataset: a file of image file names or COCO image ids (one per line; "
                           "`python -m datasets.build_index exclude` writes one) whose expressions are kept out of "
                           "training, besides those of every val/test split found under --split_root")
    data.add_argument("--allow_test_images", action="store_true",
                      help="with several --dataset: keep training expressions whose image is in an evaluation split "
                           "(off by default: such a run's test figures are not fair)")
    data.add_argument("--data_root", default="data/images", help="image root (docs/data.md has the layout)")
    data.add_argument("--split_root", default="data/split",
                      help="folder holding <dataset>/<dataset>_<split>.pth index files")
    data.add_argument("--index_cache", default="",
                      help="folder for the splits' index files (default: beside the split files when that folder is "
                           "writable, else ~/.cache/segvg/index); built once per node, shared by every process "
                           "(docs/data.md, \"The index cache\")")
    data.add_argument("--exif", default="apply", choices=["apply", "ignore"],
                      help="EXIF orientation of your own JSONL datasets' images: apply = boxes and masks refer to the "
                           "image as viewers (and annotation tools) show it, ignore = to the pixels as stored; the "
                           "built-in datasets always read the stored pixels, as the original (docs/custom_data.md)")
    data.add_argument("--num_workers", default=4, type=int, help="DataLoader worker processes per process")
    data.add_argument("--cache_data", action="store_true",
                      help="keep decoded images and tokenized expressions in memory after their first use, in "
                           "each loader process: for --num_workers 0 and data that fit in memory (demo: ~0.2 GB)")
    data.add_argument("--float_boxes", action="store_true",
                      help="keep ground-truth boxes as floats (the original truncates them to int)")
    data.add_argument("--mask_padding", action="store_true",
                      help="mark canvas padding in the image mask (the original marks none)")


def _add_augmentation_flags(parser):
    aug = parser.add_argument_group("augmentation (training splits only)")
    aug.add_argument("--aug_blur", action="store_true", help="random Gaussian blur")
    aug.add_argument("--aug_crop", action="store_true",
                     help="random crop (never when the phrase names a direction, as in the original)")
    aug.add_argument("--aug_scale", action="store_true", help="random resize of the long side (multi-scale)")
    aug.add_argument("--aug_translate", action="store_true", help="random placement on the canvas")
    aug.add_argument("--color_jitter", default=0.4, type=float,
                     help="brightness, contrast and saturation jitter strength (the original's 0.4; 0 disables)")
    aug.add_argument("--flip_text", default="word", choices=["word", "legacy"],
                     help="left/right swap on flip: whole words, or the original substring swap")


def _add_loss_flags(parser):
    loss = parser.add_argument_group("loss")
    loss.add_argument("--detach_pos_factor", action="store_true",
                      help="stop the box losses' gradient from flowing into the segmentation head")
    loss.add_argument("--seg_loss", default="on", choices=["on", "off"],
                      help="off: the paper's baseline without segmentation supervision (no focal and dice terms, box "
                           "losses unweighted); the architecture is unchanged")
    loss.add_argument("--mask_loss_coef", default=1.0, type=float,
                      help="weight of the focal term (the original: 1); the box losses' mask-fit factor is unchanged")
    loss.add_argument("--dice_loss_coef", default=1.0, type=float, help="weight of the dice term (the original: 1)")
    loss.add_argument("--presence_loss_coef", default=1.0, type=float,
                      help="--presence_head: weight of its binary cross-entropy (target: the phrase has a target)")
    loss.add_argument("--presence_gradient", default="shared", choices=["shared", "head"],
                      help="--presence_head: where its loss trains: shared = the head and the network under it; head = "
                           "the head alone, on the detached regression token, so the box trains as without the head "
                           "(docs/generalized.md)")
    loss.add_argument("--no_target_mask_loss_coef", default=1.0, type=float,
                      help="phrases with no target (\"boxes\": []) train the segmentation maps toward empty with the "
                           "focal term, times this (0: they leave the maps alone); they never enter the box terms")
    fine = parser.add_argument_group("loss: the fine mask head (--mask_head fine; --seg_loss off turns these off too)")
    fine.add_argument("--mask_supervision", default="box", choices=["box", "mask"],
                      help="box: BoxInst's projection and pairwise terms from the ground-truth box; mask: focal + dice "
                           "against the true masks where the training set has them (the demo, JSONL \"mask\"), the box "
                           "terms for the samples without one; masks are read only with \"mask\"")
    fine.add_argument("--mask_head_gradient", default="head", choices=["shared", "head"],
                      help="where the fine head's terms train: shared = the head and the network under it (backbone, "
                           "encoders, queries); head = the head alone, on detached inputs, so the rest of the model "
                           "trains as with the grid head (docs/model.md)")
    fine.add_argument("--mask_head_samples", default=0, type=int,
                      help="train the fine head on the first N samples of each batch only (0: all): its forward, "
                           "terms and backward cost N / batch of theirs, and with --mask_head_gradient head the rest "
                           "of the model trains exactly as with all (docs/model.md)")
    fine.add_argument("--mask_loss_stride", default=0, type=int, choices=[0, 1, 2, 4, 8, 16],
                      help="stride on the canvas at which the fine head's terms are computed, on its map upsampled "
                           "bilinearly (0: half the head's --mask_stride, at least 1; docs/model.md)")
    fine.add_argument("--projection_loss_coef", default=1.0, type=float,
                      help="weight of the projection term: dice of the map's x and y maxima against the box's "
                           "(BoxInst: 1)")
    fine.add_argument("--pairwise_loss_coef", default=1.0, type=float,
                      help="weight of the pairwise colour-affinity term (BoxInst: 1)")
    fine.add_argument("--box_fill_loss_coef", default=1.0, type=float,
                      help="weight of the dice against the filled box (SegVG's target), which keeps the object's "
                           "interior that the projection and pairwise terms leave free (at 0.3 the demo's head drew "
                           "outlines only; docs/model.md)")
    fine.add_argument("--pairwise_dilation", default=2, type=int,
                      help="the pairwise term's neighbours: the 8 at this distance in map cells (BoxInst: 2)")
    fine.add_argument("--pairwise_color_threshold", default=0.1, type=float,
                      help="pairs count when their LAB similarity exp(-|diff| / 2) is at least this (BoxInst: 0.3, on "
                           "colours averaged over 4x4 pixels; docs/model.md)")
    fine.add_argument("--pairwise_warmup", default=0.1, type=float,
                      help="fraction of the run over which the pairwise weight rises linearly from 0 (BoxInst: "
                           "10k of 90k iterations)")
    fine.add_argument("--mask_focal_loss_coef", default=1.0, type=float,
                      help="--mask_supervision mask: weight of the focal term against the true mask (DETR: 1)")
    fine.add_argument("--mask_dice_loss_coef", default=1.0, type=float,
                      help="--mask_supervision mask: weight of the dice term against the true mask (DETR: 1)")


def _add_optimisation_flags(parser):
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--lr", default=1e-4, type=float, help="learning rate of the new modules")
    opt.add_argument("--lr_bert", default=1e-5, type=float, help="learning rate of BERT (0 freezes it)")
    opt.add_argument("--lr_visu_cnn", default=1e-5, type=float, help="learning rate of the ResNet (0 freezes it)")
    opt.add_argument("--lr_visu_tra", default=1e-5, type=float,
                     help="learning rate of the DETR encoder layers (0 freezes them)")
    opt.add_argument("--batch_size", default=8, type=int, help="samples per process and step")
    opt.add_argument("--weight_decay", default=1e-4, type=float, help="weight decay of every group")
    opt.add_argument("--optimizer", default="adamw", choices=["adamw", "adam", "rmsprop", "sgd"], help="optimizer")
    opt.add_argument("--epochs", default=90, type=int, help="epochs to train")
    opt.add_argument("--lr_scheduler", default="step", choices=SCHEDULERS,
                     help="per-epoch step/poly/halfdecay/cosine as the original, or per-iteration cosine_iter over "
                          "the whole run (--epochs, or --max_steps / --minutes when set)")
    opt.add_argument("--lr_drop", default=60, type=int, help="step schedule: epochs between x0.1 drops")
    opt.add_argument("--lr_power", default=0.9, type=float, help="poly schedule: exponent")
    opt.add_argument("--warmup_steps", default=0, type=int, help="linear lr warmup over the first iterations")
    opt.add_argument("--cosine_hold", default=0.0, type=float,
                     help="cosine_iter: fraction of the run at the peak lr before the cosine decay starts")
    opt.add_argument("--clip_max_norm", default=0.1, type=float, help="gradient clipping norm (0 disables)")
    opt.add_argument("--freeze_epochs", default=10, type=int,
                     help="epochs during which the visual and text backbones are frozen")
    opt.add_argument("--max_steps", default=0, type=int,
                     help="training budget in optimizer steps: stop after this many (0: run all --epochs)")
    opt.add_argument("--minutes", default=0.0, type=float,
                     help="training time budget: stop when it is spent (0: run all --epochs); with --max_steps, "
                          "whichever runs out first ends the run and sets the pace of the lr schedule")
    opt.add_argument("--seed", default=42, type=int, help="seed of the data order, augmentation and initialisation")
    opt.add_argument("--deterministic", action="store_true", help="deterministic algorithms only (slower)")


def _add_checkpoint_flags(parser):
    run = parser.add_argument_group("checkpoints, logs and resuming")
    run.add_argument("--output_dir", default="",
                     help="folder of the run's checkpoints and logs (default: outputs/<dataset>); one run at a time")
    run.add_argument("--detr_model", default="", help="DETR checkpoint that initialises the visual branch")
    run.add_argument("--pretrained", default="",
                     help="fine-tune: a checkpoint (ours or an official one; a .pth file, a folder in the Hub's "
                          "layout or a Hub id ORG/NAME[@revision]) that initialises every weight, with a "
                          "fresh optimizer, schedule and epoch count; the model flags and the vocabulary come from "
                          "it unless given on the command line")
    run.add_argument("--resume", default="", help="checkpoint to continue from (also one written mid-epoch)")
    run.add_argument("--overwrite", action="store_true",
                     help="start over in an --output_dir that holds a checkpoint (its checkpoints are removed); "
                          "without it, or --auto_resume, such a folder is refused")
    run.add_argument("--allow_flag_changes", action="store_true",
                     help="resume even when the model or dataset flags differ from those the checkpoint was trained "
                          "with (other differences are listed and allowed)")
    run.add_argument("--auto_resume", action="store_true",
                     help="resume from <output_dir>/checkpoint_latest.pth when it exists, else start fresh")
    run.add_argument("--save_every", default=1000, type=int,
                     help="also write checkpoint_latest.pth every N optimizer steps (0: at epoch ends only); 1000 "
                          "steps are ~8 minutes at the paper's settings, a save ~1%% of that")
    run.add_argument("--keep_last", default=1, type=int,
                     help="keep the last K step checkpoints as checkpoint_step<N>.pth too (1: the latest only)")
    run.add_argument("--eval_every", default=0, type=int,
                     help="also validate every N steps on the first --eval_subset validation samples (val_curve.txt)")
    run.add_argument("--eval_subset", default=500, type=int,
                     help="samples of the --eval_every validation (of each dataset, with several)")
    run.add_argument("--best_on", default="",
                     help="with several --dataset: the dataset whose val Acc@0.5 picks best_checkpoint.pth (default: "
                          "the mean over the datasets); on data with no-target or several-target phrases: accu or "
                          "giou picks on that one (default: the mean of gIoU and the one-target Acc@0.5)")
    run.add_argument("--tensorboard", default="", help="TensorBoard log folder (needs the tensorboard package)")


def _add_distributed_flags(parser):
    dist = parser.add_argument_group("distributed (torchrun sets RANK, WORLD_SIZE and LOCAL_RANK)")
    dist.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cuda, cuda:N or cpu")
    add_process_group_flags(dist)


def add_process_group_flags(group):
    """--dist_url and --dist_timeout (train.py, eval.py, predict.py under torchrun)."""
    group.add_argument("--dist_url", default="env://", help="init_method of the process group under torchrun")
    group.add_argument("--dist_timeout", default=1800, type=float,
                       help="seconds a collective may wait for the other processes before the run ends with an error "
                            "(a rank that hangs instead of dying; docs/training.md)")


def _add_speed_flags(parser):
    speed = parser.add_argument_group("speed and memory")
    speed.add_argument("--amp", default="off", choices=AMP_CHOICES,
                       help="autocast precision; fp16 also uses a gradient scaler")
    speed.add_argument("--channels_last", action="store_true",
                       help="channels-last memory format for the CNN (much faster on CPU)")
    speed.add_argument("--compile", action="store_true",
                       help="torch.compile the model (needs a C++ compiler on CPU, Triton on GPU; falls back to the "
                            "uncompiled model with a warning); the first steps pay the compile time")
    speed.add_argument("--tf32", action="store_true",
                       help="TF32 matrix products on Ampere+ GPUs (convolutions use TF32 there by default, as in the "
                            "original); faster, ~1e-3 relative precision")
    speed.add_argument("--checkpoint_activations", action="store_true",
                       help="recompute each ResNet stage and transformer layer in backward instead of keeping its "
                            "activations: less memory, ~30%% more compute, the same gradients")
