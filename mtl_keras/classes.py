"""Class names and fine -> coarse maps of the CIFAR datasets, shipped because tfds knows them only after
a real download. Label ids follow tfds (the original CIFAR order: alphabetical for CIFAR-100)."""

from __future__ import annotations

CIFAR10_FINE = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# The seed study's superclasses: animal = labels 2-7 (bird .. horse), vehicle = the rest.
CIFAR10_COARSE = ("animal", "vehicle")
CIFAR10_FINE_TO_COARSE = (1, 1, 0, 0, 0, 0, 0, 0, 1, 1)

# CIFAR-100 superclass -> its five classes, as listed by the dataset's authors.
_CIFAR100_TREE = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
CIFAR100_COARSE = tuple(sorted(_CIFAR100_TREE))
CIFAR100_FINE = tuple(sorted(name for members in _CIFAR100_TREE.values() for name in members))
_PARENT = {fine: coarse for coarse, members in _CIFAR100_TREE.items() for fine in members}
CIFAR100_FINE_TO_COARSE = tuple(CIFAR100_COARSE.index(_PARENT[name]) for name in CIFAR100_FINE)

# dataset name -> (fine names, coarse names, fine -> coarse)
CLASSES = {
    "cifar10": (CIFAR10_FINE, CIFAR10_COARSE, CIFAR10_FINE_TO_COARSE),
    "cifar100": (CIFAR100_FINE, CIFAR100_COARSE, CIFAR100_FINE_TO_COARSE),
}
