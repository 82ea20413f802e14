// Generates the TypeScript types of the policyhub.v1 messages and of the
// BundleService client from the repository's proto/ with
// @grpc/proto-loader's proto-loader-gen-types (no protoc), into
// src/generated/, which is not committed.
import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dirname, join } from "node:path";

const root = dirname(dirname(fileURLToPath(import.meta.url)));
// Relative, so that the generated files name the proto by its place in the
// repository.
const protos = join("..", "..", "proto");
const out = join(root, "src", "generated");
rmSync(out, { recursive: true, force: true });
execFileSync(
  process.execPath,
  [
    join(root, "node_modules", "@grpc", "proto-loader", "build", "bin", "proto-loader-gen-types.js"),
    "--grpcLib=@grpc/grpc-js",
    "--outDir", out,
    "--includeDirs", protos,
    "--longs=String",
    "--enums=String",
    "--defaults",
    "--oneofs",
    "--inputTemplate=%s__Input",
    "--outputTemplate=%s",
    "--importFileExtension=.js",
    "policyhub/v1/bundle_service.proto",
  ],
  { stdio: "inherit", cwd: root },
);
