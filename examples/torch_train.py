"""Train a small CNN in plain PyTorch from an augzarr store, with checkpoints that resume mid-epoch.

    build-aug --source cifar10 --out data/aug.zarr --copies 5
    python examples/torch_train.py --store data/aug.zarr --epochs 5 --checkpoint runs/cnn.pt
    # stop it at any point (Ctrl-C, kill -9) and run the same command again: it continues from the last
    # checkpoint with exactly the batches the uninterrupted run would have seen next

The batches come from augzarr.torch.StoreDataset through 2 DataLoader workers (--workers): uint8 images in
CHW layout and int64 labels, shuffled by the store's epoch plan, a new order each epoch (set_epoch). A
checkpoint holds the model, the optimizer, torch's generator and the dataset's position (state_dict()).
Needs the torch extra: pip install 'augzarr[torch]'. No weights are downloaded.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from augzarr.torch import StoreDataset


def small_cnn(channels: int, classes: int) -> nn.Module:
    """Two convolutions and a linear layer: any image size (the pooling at the end is adaptive)."""
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, classes),
    )


def save(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, data: StoreDataset, step: int) -> None:
    """Written whole or not at all: a kill while saving leaves the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "data": data.state_dict(),
            "step": step,
        },
        partial,
    )
    os.replace(partial, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", default="data/aug.zarr", help="the store's folder or URL")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0, help="the model's initial weights and the data's order")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=Path("runs/torch_cnn.pt"),
        help="saved every --checkpoint-every steps and at the end of each epoch; resumed from when it exists",
    )
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints")
    parser.add_argument(
        "--stop-after",
        type=int,
        default=0,
        help="stop after this many steps in all (a checkpoint first): an interruption, to try the resume",
    )
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train = StoreDataset(args.store, "train", batch_size=args.batch_size, seed=args.seed, layout="CHW")
    model = small_cnn(train.image_shape[-1], len(train.class_names))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    step = 0
    if args.checkpoint.exists():
        state = torch.load(args.checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        train.load_state_dict(state["data"])  # the epoch under way, and the batches of it already trained on
        step = state["step"]
        position = state["data"]
        print(
            f"resumed from {args.checkpoint}: epoch {position['epoch']}, {position['batches']} batches into it, step {step}"
        )

    # persistent workers keep their window reader between epochs; set_epoch reaches them through shared memory
    loader = train.loader(num_workers=args.workers, persistent_workers=args.workers > 0)
    for epoch in range(train.epoch, args.epochs):
        train.set_epoch(epoch)
        model.train()
        seen, loss_sum, started = 0, 0.0, time.perf_counter()
        for images, labels in loader:
            logits = model(images.float().div_(255))
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            seen += len(labels)
            loss_sum += loss.item() * len(labels)
            if step % args.checkpoint_every == 0 or step == args.stop_after:
                save(args.checkpoint, model, optimizer, train, step)
            if step == args.stop_after:
                print(f"stopped after step {step}, checkpoint in {args.checkpoint}")
                return
        save(args.checkpoint, model, optimizer, train, step)
        rate = seen / max(time.perf_counter() - started, 1e-9)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {loss_sum / max(seen, 1):.4f}, {seen} images at {rate:,.0f}/s")


if __name__ == "__main__":
    main()
