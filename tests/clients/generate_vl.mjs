// Greedy generation with transformers.js (Node, onnxruntime-node CPU) from an lfm2_onnx LFM2-VL export folder,
// on model inputs given directly (the image processor is not under test here):
//
//   node tests/clients/generate_vl.mjs --model /abs/export/folder --inputs inputs.json [--max-new-tokens 16]
//
// inputs.json: {"input_ids": [[...]], "pixel_values": {"data": [...], "dims": [N, L, D]},
//               "pixel_attention_mask": {"data": [...], "dims": [N, L]}, "spatial_shapes": {"data": [...], "dims": [N, 2]}}
// The folder is loaded as lfm2_onnx.build wrote it (config.json's transformers.js_config picks the
// vision_encoder / embed_tokens / decoder_model_merged files). The last line on stdout is one JSON object:
//   {"generated": [new token ids], "versions": {...}}

import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

const stdoutLog = console.log;
console.log = (...args) => console.error(...args);
console.info = (...args) => console.error(...args);
console.warn = (...args) => console.error(...args);

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    inputs: { type: 'string' },
    'max-new-tokens': { type: 'string', default: '16' },
  },
  strict: true,
});
if (!values.model || !values.inputs) {
  console.error('generate_vl.mjs: --model FOLDER and --inputs FILE are required');
  process.exit(2);
}
const folder = path.resolve(values.model);
const given = JSON.parse(fs.readFileSync(values.inputs, 'utf8'));

const { env, AutoModelForImageTextToText, Tensor } = await import('@huggingface/transformers');
const ort = await import('onnxruntime-node');
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.localModelPath = path.dirname(folder);

const model = await AutoModelForImageTextToText.from_pretrained(folder, { device: 'cpu', local_files_only: true });
const ints = (t) => new Tensor('int64', BigInt64Array.from(t.data.map(BigInt)), t.dims);
const prompt = given.input_ids[0];
const input_ids = new Tensor('int64', BigInt64Array.from(prompt.map(BigInt)), [1, prompt.length]);
const attention_mask = new Tensor('int64', new BigInt64Array(prompt.length).fill(1n), [1, prompt.length]);
const output = await model.generate({
  input_ids,
  attention_mask,
  pixel_values: new Tensor('float32', Float32Array.from(given.pixel_values.data), given.pixel_values.dims),
  pixel_attention_mask: ints(given.pixel_attention_mask),
  spatial_shapes: ints(given.spatial_shapes),
  max_new_tokens: Number.parseInt(values['max-new-tokens'], 10),
  do_sample: false,
});
const sequence = Array.from((output.sequences ?? output).tolist()[0], Number);
await model.dispose();
stdoutLog(JSON.stringify({
  generated: sequence.slice(prompt.length),
  versions: { transformers_js: env.version, onnxruntime_node: ort.env?.versions?.common ?? null },
}));
