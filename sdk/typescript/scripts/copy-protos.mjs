// Copies the protos the client loads at run time into dist/proto/, so the
// published package carries the contract it was built from.
import { cpSync, rmSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const out = join(root, "dist", "proto");
rmSync(out, { recursive: true, force: true });
cpSync(join(root, "..", "..", "proto"), out, {
  recursive: true,
  filter: (source) => !source.endsWith(".yaml"),
});
