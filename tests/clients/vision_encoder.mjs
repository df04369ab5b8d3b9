// Runs an LFM2-VL vision encoder graph in the onnxruntime-node that transformers.js 4.3.1 bundles,
// fed the way its Lfm2VlImageProcessor feeds it: pixel_values float32 [N, L, C*P*P],
// pixel_attention_mask int64 [N, L], spatial_shapes int64 [N, 2].
//
//   node tests/clients/vision_encoder.mjs --model /abs/vision_encoder.onnx --inputs /abs/inputs.json
//
// inputs.json: {"pixel_values": {"dims": [...], "data": [...]}, "pixel_attention_mask": ..., "spatial_shapes": ...}.
// The last line on stdout is one JSON object: {"dims": [...], "type": ..., "data": [...], "versions": {...}}.

import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import { env } from '@huggingface/transformers';
// transformers.js's own dependency: the runtime its vision_encoder session runs on.
import * as ort from 'onnxruntime-node';

const { values } = parseArgs({ options: { model: { type: 'string' }, inputs: { type: 'string' } }, strict: true });
const inputs = JSON.parse(readFileSync(values.inputs, 'utf8'));
const feeds = {
  pixel_values: new ort.Tensor('float32', Float32Array.from(inputs.pixel_values.data), inputs.pixel_values.dims),
  pixel_attention_mask: new ort.Tensor('int64', BigInt64Array.from(inputs.pixel_attention_mask.data, BigInt),
    inputs.pixel_attention_mask.dims),
  spatial_shapes: new ort.Tensor('int64', BigInt64Array.from(inputs.spatial_shapes.data, BigInt),
    inputs.spatial_shapes.dims),
};
const session = await ort.InferenceSession.create(values.model, { executionProviders: ['cpu'] });
const output = (await session.run(feeds)).image_features;
console.log(JSON.stringify({
  dims: output.dims, type: output.type, data: Array.from(output.data),
  inputNames: session.inputNames, outputNames: session.outputNames,
  versions: { transformers_js: env.version, onnxruntime_node: ort.env?.versions?.common ?? null },
}));
