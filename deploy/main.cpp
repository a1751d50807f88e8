// segadapt_trt: segment PNG images with a TensorRT engine exported by `segadapt export --tensorrt`.
//
// Usage: segadapt_trt ENGINE.plan OUT_DIR IMAGE.png [IMAGE.png ...]
//
// The engine's input contract comes from the ENGINE.plan.meta sidecar (key=value lines written by
// engine/export.py): channel_order, mean, std, output kind and input size. Per image the program reads the PNG
// (RGB, libpng), resizes it bilinearly to the engine's input size when it differs, normalises it on the host,
// runs the engine on one CUDA stream, takes the label map (the "label" output, or the argmax of "upsampled"
// logits), maps it back to the image size (nearest) and writes OUT_DIR/<stem>_trainIds.png (8-bit gray).
// Python's `segadapt predict` resizes with PIL's bicubic filter, so maps agree exactly only for images already at
// the engine's input size.

#include <NvInfer.h>
#include <cuda_runtime_api.h>
#include <png.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

class Logger : public nvinfer1::ILogger {
 public:
  void log(Severity severity, const char* message) noexcept override {
    if (severity <= Severity::kWARNING) std::cerr << "[tensorrt] " << message << "\n";
  }
};

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

struct Meta {
  std::string channel_order = "bgr";
  float mean[3] = {0, 0, 0};
  float std[3] = {1, 1, 1};
  std::string output = "label";
  int input_width = 0;  // 0: the image's own size (dynamic engines)
  int input_height = 0;
  std::string input_name = "image";
  std::string output_name = "label";
};

void parse_triple(const std::string& text, float* out, const std::string& key) {
  std::stringstream stream(text);
  std::string item;
  for (int index = 0; index < 3; ++index) {
    if (!std::getline(stream, item, ',')) throw std::runtime_error("meta key " + key + ": expected 3 values");
    out[index] = std::stof(item);
  }
}

Meta read_meta(const std::string& plan) {
  std::ifstream file(plan + ".meta");
  if (!file) throw std::runtime_error(plan + ".meta is missing; rebuild the engine with `segadapt export --tensorrt`");
  std::map<std::string, std::string> values;
  for (std::string line; std::getline(file, line);) {
    auto split = line.find('=');
    if (split != std::string::npos) values[line.substr(0, split)] = line.substr(split + 1);
  }
  if (values["format"] != "segadapt-engine-meta-1") throw std::runtime_error(plan + ".meta: unknown format");
  Meta meta;
  meta.channel_order = values["channel_order"];
  parse_triple(values["mean"], meta.mean, "mean");
  parse_triple(values["std"], meta.std, "std");
  meta.output = values["output"];
  if (meta.output == "logits")
    throw std::runtime_error("engine outputs stride-8 logits; export with --set export.output=label");
  std::sscanf(values["input_size"].c_str(), "%dx%d", &meta.input_width, &meta.input_height);
  meta.input_name = values["input_name"];
  meta.output_name = values["output_name"];
  return meta;
}

struct RgbImage {
  int width = 0;
  int height = 0;
  std::vector<uint8_t> pixels;  // HxWx3
};

RgbImage read_png(const std::string& path) {
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&image, path.c_str())) throw std::runtime_error(path + ": " + image.message);
  image.format = PNG_FORMAT_RGB;
  RgbImage out{static_cast<int>(image.width), static_cast<int>(image.height), {}};
  out.pixels.resize(PNG_IMAGE_SIZE(image));
  if (!png_image_finish_read(&image, nullptr, out.pixels.data(), 0, nullptr))
    throw std::runtime_error(path + ": " + image.message);
  return out;
}

void write_gray_png(const std::string& path, const std::vector<uint8_t>& label, int width, int height) {
  png_image image;
  std::memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  image.width = width;
  image.height = height;
  image.format = PNG_FORMAT_GRAY;
  if (!png_image_write_to_file(&image, path.c_str(), 0, label.data(), 0, nullptr))
    throw std::runtime_error(path + ": " + image.message);
}

// Bilinear resize with half-pixel centres, then channel order, mean and std: float NCHW for one image.
std::vector<float> prepare(const RgbImage& image, int width, int height, const Meta& meta) {
  std::vector<float> out(3 * static_cast<size_t>(width) * height);
  const bool bgr = meta.channel_order == "bgr";
  const float scale_x = static_cast<float>(image.width) / width, scale_y = static_cast<float>(image.height) / height;
  for (int y = 0; y < height; ++y) {
    float source_y = std::clamp((y + 0.5f) * scale_y - 0.5f, 0.0f, image.height - 1.0f);
    int y0 = static_cast<int>(source_y), y1 = std::min(y0 + 1, image.height - 1);
    float weight_y = source_y - y0;
    for (int x = 0; x < width; ++x) {
      float source_x = std::clamp((x + 0.5f) * scale_x - 0.5f, 0.0f, image.width - 1.0f);
      int x0 = static_cast<int>(source_x), x1 = std::min(x0 + 1, image.width - 1);
      float weight_x = source_x - x0;
      for (int c = 0; c < 3; ++c) {
        auto at = [&](int yy, int xx) { return static_cast<float>(image.pixels[(yy * image.width + xx) * 3 + c]); };
        float top = at(y0, x0) * (1 - weight_x) + at(y0, x1) * weight_x;
        float bottom = at(y1, x0) * (1 - weight_x) + at(y1, x1) * weight_x;
        float value = top * (1 - weight_y) + bottom * weight_y;
        int channel = bgr ? 2 - c : c;
        out[(static_cast<size_t>(channel) * height + y) * width + x] = (value - meta.mean[channel]) / meta.std[channel];
      }
    }
  }
  return out;
}

size_t element_size(nvinfer1::DataType type) {
  switch (type) {
    case nvinfer1::DataType::kFLOAT:
    case nvinfer1::DataType::kINT32:
      return 4;
    case nvinfer1::DataType::kINT64:
      return 8;
    default:
      throw std::runtime_error("unsupported engine output type (expected float32, int32 or int64)");
  }
}

// Raw engine output (N=1) -> uint8 labels HxW: a cast for label outputs, an argmax over C for float logits.
std::vector<uint8_t> to_labels(const std::vector<uint8_t>& raw, nvinfer1::DataType type, const nvinfer1::Dims& dims) {
  const bool logits = dims.nbDims == 4;
  const int64_t classes = logits ? dims.d[1] : 1, pixels = dims.d[dims.nbDims - 2] * dims.d[dims.nbDims - 1];
  std::vector<uint8_t> labels(pixels);
  for (int64_t p = 0; p < pixels; ++p) {
    if (type == nvinfer1::DataType::kINT32) {
      labels[p] = static_cast<uint8_t>(reinterpret_cast<const int32_t*>(raw.data())[p]);
    } else if (type == nvinfer1::DataType::kINT64) {
      labels[p] = static_cast<uint8_t>(reinterpret_cast<const int64_t*>(raw.data())[p]);
    } else {
      const float* values = reinterpret_cast<const float*>(raw.data());
      int64_t best = 0;
      for (int64_t c = 1; c < classes; ++c)
        if (values[c * pixels + p] > values[best * pixels + p]) best = c;
      labels[p] = static_cast<uint8_t>(best);
    }
  }
  return labels;
}

std::vector<uint8_t> resize_nearest(const std::vector<uint8_t>& label, int width, int height, int out_w, int out_h) {
  if (width == out_w && height == out_h) return label;
  std::vector<uint8_t> out(static_cast<size_t>(out_w) * out_h);
  for (int y = 0; y < out_h; ++y)
    for (int x = 0; x < out_w; ++x)
      out[y * out_w + x] = label[std::min(y * height / out_h, height - 1) * width + std::min(x * width / out_w, width - 1)];
  return out;
}

std::string stem(const std::string& path) {
  std::string name = path.substr(path.find_last_of('/') + 1);
  return name.substr(0, name.find_last_of('.'));
}

class Runner {
 public:
  Runner(const std::string& plan, Meta meta) : meta_(std::move(meta)) {
    std::ifstream file(plan, std::ios::binary);
    if (!file) throw std::runtime_error(plan + " cannot be read");
    std::vector<char> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    engine_.reset(runtime_->deserializeCudaEngine(bytes.data(), bytes.size()));
    if (!engine_) throw std::runtime_error(plan + ": not an engine this TensorRT version and GPU can load");
    context_.reset(engine_->createExecutionContext());
    check_cuda(cudaStreamCreate(&stream_), "cudaStreamCreate");
  }
  ~Runner() { cudaStreamDestroy(stream_); }

  void segment(const std::string& path, const std::string& out_dir) {
    RgbImage image = read_png(path);
    nvinfer1::Dims input = engine_->getTensorShape(meta_.input_name.c_str());
    int height = input.d[2] > 0 ? input.d[2] : (meta_.input_height > 0 ? meta_.input_height : image.height);
    int width = input.d[3] > 0 ? input.d[3] : (meta_.input_width > 0 ? meta_.input_width : image.width);
    std::vector<float> host = prepare(image, width, height, meta_);
    context_->setInputShape(meta_.input_name.c_str(), nvinfer1::Dims4{1, 3, height, width});
    nvinfer1::Dims out_dims = context_->getTensorShape(meta_.output_name.c_str());
    nvinfer1::DataType out_type = engine_->getTensorDataType(meta_.output_name.c_str());
    size_t out_bytes = element_size(out_type);
    for (int d = 0; d < out_dims.nbDims; ++d) out_bytes *= out_dims.d[d];
    void *device_in = nullptr, *device_out = nullptr;
    check_cuda(cudaMalloc(&device_in, host.size() * sizeof(float)), "cudaMalloc input");
    check_cuda(cudaMalloc(&device_out, out_bytes), "cudaMalloc output");
    std::vector<uint8_t> raw(out_bytes);
    check_cuda(cudaMemcpyAsync(device_in, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice, stream_),
               "copy input");
    context_->setTensorAddress(meta_.input_name.c_str(), device_in);
    context_->setTensorAddress(meta_.output_name.c_str(), device_out);
    bool ok = context_->enqueueV3(stream_);
    check_cuda(cudaMemcpyAsync(raw.data(), device_out, out_bytes, cudaMemcpyDeviceToHost, stream_), "copy output");
    check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    cudaFree(device_in);
    cudaFree(device_out);
    if (!ok) throw std::runtime_error(path + ": enqueueV3 failed");
    std::vector<uint8_t> label = to_labels(raw, out_type, out_dims);
    label = resize_nearest(label, width, height, image.width, image.height);
    write_gray_png(out_dir + "/" + stem(path) + "_trainIds.png", label, image.width, image.height);
  }

 private:
  Logger logger_;
  Meta meta_;
  std::unique_ptr<nvinfer1::IRuntime> runtime_;
  std::unique_ptr<nvinfer1::ICudaEngine> engine_;
  std::unique_ptr<nvinfer1::IExecutionContext> context_;
  cudaStream_t stream_ = nullptr;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: segadapt_trt ENGINE.plan OUT_DIR IMAGE.png [IMAGE.png ...]\n";
    return 2;
  }
  try {
    Runner runner(argv[1], read_meta(argv[1]));
    std::filesystem::create_directories(argv[2]);
    for (int index = 3; index < argc; ++index) {
      runner.segment(argv[index], argv[2]);
      std::cout << "[" << index - 2 << "/" << argc - 3 << "] " << argv[index] << "\n";
    }
  } catch (const std::exception& error) {
    std::cerr << "segadapt_trt: error: " << error.what() << "\n";
    return 1;
  }
  return 0;
}
