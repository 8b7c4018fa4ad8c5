"""Train SegVG. Flags keep the original repository's names; defaults are the paper configuration."""
import argparse


def get_args_parser():
    parser = argparse.ArgumentParser("SegVG training", add_help=False)

    # Optimisation (SPEC §5, §7.2)
    parser.add_argument("--lr", default=1e-4, type=float, help="lr of the new modules")
    parser.add_argument("--lr_bert", default=1e-5, type=float)
    parser.add_argument("--lr_visu_cnn", default=1e-5, type=float)
    parser.add_argument("--lr_visu_tra", default=1e-5, type=float)
    parser.add_argument("--batch_size", default=8, type=int, help="per process")
    parser.add_argument("--weight_decay", default=1e-4, type=float)
    parser.add_argument("--epochs", default=90, type=int)
    parser.add_argument("--lr_power", default=0.9, type=float, help="exponent of the poly schedule")
    parser.add_argument("--clip_max_norm", default=0.1, type=float, help="0 disables clipping")
    parser.add_argument("--optimizer", default="adamw", choices=["adamw", "adam", "rmsprop", "sgd"])
    parser.add_argument("--lr_scheduler", default="step", choices=["step", "poly", "halfdecay", "cosine"])
    parser.add_argument("--lr_drop", default=60, type=int)
    parser.add_argument("--freeze_epochs", default=10, type=int,
                        help="epochs during which the visual and text backbones are frozen")

    # Augmentation (SPEC §4.5)
    parser.add_argument("--aug_blur", action="store_true")
    parser.add_argument("--aug_crop", action="store_true")
    parser.add_argument("--aug_scale", action="store_true")
    parser.add_argument("--aug_translate", action="store_true")
    parser.add_argument("--flip_text", default="word", choices=["word", "legacy"],
                        help="left/right swap on flip: whole words, or the original substring swap")
    parser.add_argument("--mask_padding", action="store_true",
                        help="mark canvas padding in the image mask (the original marks none)")
    parser.add_argument("--float_boxes", action="store_true",
                        help="keep ground-truth boxes as floats (the original truncates them to int)")

    # Visual branch (SPEC §2.2)
    parser.add_argument("--backbone", default="resnet101",
                        choices=["resnet18", "resnet34", "resnet50", "resnet101"])
    parser.add_argument("--backbone_norm", default="frozen", choices=["frozen", "batch", "group"],
                        help="ResNet normalisation: frozen statistics (pretrained) or trainable (from scratch)")
    parser.add_argument("--train_stem", action="store_true",
                        help="also train the ResNet stem and layer1 (frozen in the original)")
    parser.add_argument("--position_embedding", default="sine", choices=["sine", "learned"])
    parser.add_argument("--enc_layers", default=6, type=int,
                        help="DETR encoder layers = number of Triple Alignment stages")
    parser.add_argument("--dim_feedforward", default=2048, type=int)
    parser.add_argument("--hidden_dim", default=256, type=int)
    parser.add_argument("--dropout", default=0.1, type=float)
    parser.add_argument("--nheads", default=8, type=int)
    parser.add_argument("--pre_norm", action="store_true")
    parser.add_argument("--imsize", default=640, type=int)

    # Text branch (SPEC §2.3)
    parser.add_argument("--bert_model", default="bert-base-uncased",
                        help="Hugging Face hub name or local folder (weights, config and vocabulary)")
    parser.add_argument("--bert_init", default="pretrained", choices=["pretrained", "random"],
                        help="random: build BERT from the --bert_* sizes below without any download")
    parser.add_argument("--bert_layers", default=12, type=int)
    parser.add_argument("--bert_hidden_dim", default=768, type=int)
    parser.add_argument("--bert_heads", default=12, type=int)
    parser.add_argument("--bert_ffn", default=3072, type=int)
    parser.add_argument("--bert_vocab_size", default=30522, type=int)
    parser.add_argument("--vocab_file", default="",
                        help="WordPiece vocab.txt to tokenize with instead of --bert_model's")
    parser.add_argument("--max_query_len", default=40, type=int)

    # Vision-language encoder, decoder, heads (SPEC §2.4-§2.7)
    parser.add_argument("--vl_dropout", default=0.1, type=float)
    parser.add_argument("--vl_nheads", default=8, type=int)
    parser.add_argument("--vl_hidden_dim", default=256, type=int)
    parser.add_argument("--vl_dim_feedforward", default=2048, type=int)
    parser.add_argument("--vl_enc_layers", default=6, type=int)
    parser.add_argument("--vl_dec_layers", default=6, type=int)
    parser.add_argument("--num_seg_queries", default=5, type=int)
    parser.add_argument("--drop_key", default=0.0, type=float,
                        help="real DropKey rate in the custom attentions (training only; the original's is a no-op)")

    # Loss (SPEC §3)
    parser.add_argument("--detach_pos_factor", action="store_true",
                        help="stop the box losses' gradient from flowing into the segmentation head")

    # Data
    parser.add_argument("--data_root", default="./data/images")
    parser.add_argument("--split_root", default="./data/split")
    parser.add_argument("--dataset", default="unc",
                        choices=["unc", "unc+", "gref", "gref_umd", "referit", "flickr", "demo"])
    parser.add_argument("--num_workers", default=4, type=int)

    # Run
    parser.add_argument("--output_dir", default="./outputs")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seed", default=42, type=int)
    parser.add_argument("--resume", default="")
    parser.add_argument("--detr_model", default="", help="DETR checkpoint that initialises the visual branch")
    parser.add_argument("--start_epoch", default=0, type=int)
    parser.add_argument("--dist_url", default="env://")
    parser.add_argument("--tensorboard", default="")
    return parser
