// P3dDecodeCropClip: the same crop window of each of T JPEG frames, decoded by libjpeg-turbo
// straight into one [T, h, w, 3] uint8 tensor, optionally flipped left-right and/or with its
// channels reversed; the result equals tf.stack([tf.io.decode_and_crop_jpeg(f, window, channels=3)
// for f in frames]) followed by the same reversals (p3d_keras/tfrecords_tools/clip_decoder.py
// checks that when it loads this library).
//
// Why: TensorFlow's decoder copies each row of a crop whose x offset is not on a 16-pixel (MCU)
// boundary out of a scratch row, then the frames are stacked into the clip and the clip is
// flipped: three copies of each clip on top of decoding. Here libjpeg writes each row in place.
// libjpeg decodes a cropped row from the MCU boundary left of the crop, so the dx pixels before
// the crop land on the end of the row above; those bytes are saved before and put back after.
//
// Decoding matches TensorFlow's defaults: RGB output (grayscale frames replicated, CMYK frames
// converted as TensorFlow does), fancy upsampling, the fast integer IDCT (TensorFlow's
// JDCT_DEFAULT). So do its errors: data that does not start with FF D8 FF, a frame header of 2**29
// samples or more, libjpeg's errors (e.g. a bad frame or scan header or Huffman table), and
// truncated or empty data raise; libjpeg's warnings (corrupt data, a premature end of the entropy
// data, which libjpeg fills with zeros) do not, as in TensorFlow (its try_recover_truncated_jpeg
// is off). tests/test_clip_decoder.py checks that on damaged frames: raise for raise, equal clips.
#include <algorithm>
#include <csetjmp>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <jpeglib.h>  // needs size_t and FILE first
#include <jerror.h>

#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace {

using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;
using ::tensorflow::tstring;
namespace errors = ::tensorflow::errors;

struct ErrorManager {
  jpeg_error_mgr pub;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

// libjpeg's warnings (corrupt data it decodes through) are not printed; errors are returned.
void OutputMessage(j_common_ptr) {}

void ErrorExit(j_common_ptr cinfo) {
  ErrorManager* manager = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, manager->message);
  longjmp(manager->jump, 1);
}

void InitSource(j_decompress_ptr) {}
void TermSource(j_decompress_ptr) {}

// All the data is in memory: asking for more means the JPEG is empty or truncated.
boolean FillInputBuffer(j_decompress_ptr cinfo) {
  ERREXIT(cinfo, JERR_INPUT_EOF);
  return FALSE;
}

void SkipInputData(j_decompress_ptr cinfo, long count) {
  if (count <= 0) return;
  if (static_cast<size_t>(count) > cinfo->src->bytes_in_buffer) ERREXIT(cinfo, JERR_INPUT_EOF);
  cinfo->src->next_input_byte += count;
  cinfo->src->bytes_in_buffer -= count;
}

struct Window {
  int y, x, height, width;
  bool flip, reverse_channels;
};

// Reverses the pixels and/or the channels of one row of `width` RGB pixels in place.
void ReverseRow(uint8_t* row, int width, bool flip, bool reverse_channels) {
  uint8_t* end = row + 3 * width;
  if (flip && reverse_channels) {
    std::reverse(row, end);
  } else if (flip) {
    for (uint8_t *a = row, *b = end - 3; a < b; a += 3, b -= 3) {
      std::swap(a[0], b[0]);
      std::swap(a[1], b[1]);
      std::swap(a[2], b[2]);
    }
  } else if (reverse_channels) {
    for (uint8_t* p = row; p < end; p += 3) std::swap(p[0], p[2]);
  }
}

// TensorFlow's conversion of `width` CMYK pixels (inverted when an Adobe marker says so) to RGB.
void CmykToRgb(const uint8_t* cmyk, int width, bool adobe, uint8_t* rgb) {
  for (int i = 0; i < width; ++i, cmyk += 4, rgb += 3) {
    const int c = cmyk[0], m = cmyk[1], y = cmyk[2], k = cmyk[3];
    if (adobe) {
      rgb[0] = k * c / 255, rgb[1] = k * m / 255, rgb[2] = k * y / 255;
    } else {
      rgb[0] = (255 - k) * (255 - c) / 255, rgb[1] = (255 - k) * (255 - m) / 255, rgb[2] = (255 - k) * (255 - y) / 255;
    }
  }
}

// Decodes `window` of one JPEG into `out` (window.height rows of 3 * window.width bytes); rows
// are written in place when at least `room` bytes before `out` belong to the caller. Returns ""
// or what went wrong.
std::string DecodeWindow(const tstring& data, const Window& window, uint8_t* out, size_t room,
                         std::vector<uint8_t>* scratch) {
  jpeg_decompress_struct cinfo;
  ErrorManager manager;
  jpeg_source_mgr source;
  cinfo.err = jpeg_std_error(&manager.pub);
  manager.pub.error_exit = ErrorExit;
  manager.pub.output_message = OutputMessage;
  if (setjmp(manager.jump)) {
    jpeg_destroy_decompress(&cinfo);
    return manager.message;
  }
  jpeg_create_decompress(&cinfo);
  source.init_source = InitSource;
  source.fill_input_buffer = FillInputBuffer;
  source.skip_input_data = SkipInputData;
  source.resync_to_restart = jpeg_resync_to_restart;
  source.term_source = TermSource;
  source.next_input_byte = reinterpret_cast<const JOCTET*>(data.data());
  source.bytes_in_buffer = data.size();
  cinfo.src = &source;
  // TensorFlow's checks before and after the header (tensorflow/core/kernels/image/decode_image_op.cc,
  // tensorflow/core/lib/jpeg/jpeg_mem.cc): its signature, and at most 2**29 - 1 samples.
  if (data.size() < 3 || std::memcmp(data.data(), "\xff\xd8\xff", 3) != 0) {
    jpeg_destroy_decompress(&cinfo);
    return "not a JPEG (it does not start with FF D8 FF)";
  }
  jpeg_read_header(&cinfo, TRUE);
  const bool cmyk = cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK;
  cinfo.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  cinfo.do_fancy_upsampling = TRUE;
  cinfo.dct_method = JDCT_IFAST;
  jpeg_calc_output_dimensions(&cinfo);
  const int64_t samples = static_cast<int64_t>(cinfo.output_height) * cinfo.output_width * cinfo.num_components;
  if (samples >= (int64_t{1} << 29)) {
    jpeg_destroy_decompress(&cinfo);
    return "the frame header's size " + std::to_string(cinfo.output_height) + "x" +
           std::to_string(cinfo.output_width) + "x" + std::to_string(cinfo.num_components) +
           " is too large (TensorFlow's decoder refuses 2**29 samples or more)";
  }
  jpeg_start_decompress(&cinfo);
  const int image_height = cinfo.output_height, image_width = cinfo.output_width;
  if (window.y < 0 || window.x < 0 || window.y + window.height > image_height ||
      window.x + window.width > image_width) {
    jpeg_destroy_decompress(&cinfo);
    return "the crop window [" + std::to_string(window.y) + ", " + std::to_string(window.x) + ", " +
           std::to_string(window.height) + ", " + std::to_string(window.width) + "] is not inside the " +
           std::to_string(image_height) + "x" + std::to_string(image_width) + " frame";
  }
  JDIMENSION x = window.x, decoded_width = window.width;
  jpeg_crop_scanline(&cinfo, &x, &decoded_width);
  const size_t lead_pixels = window.x - static_cast<int>(x);
  const size_t lead = 3 * lead_pixels;  // bytes before the crop
  // libjpeg only widens to the left; CMYK rows are converted from the scratch row
  const bool in_place = !cmyk && decoded_width == window.width + lead_pixels;
  if (window.y > 0 && jpeg_skip_scanlines(&cinfo, window.y) != static_cast<JDIMENSION>(window.y)) {
    jpeg_destroy_decompress(&cinfo);
    return "premature end of JPEG data";
  }
  const size_t row_bytes = 3 * static_cast<size_t>(window.width);
  scratch->resize((cmyk ? 4 : 3) * static_cast<size_t>(decoded_width));
  uint8_t saved[3 * 64];
  for (int r = 0; r < window.height; ++r) {
    uint8_t* row = out + r * row_bytes;
    const bool direct = in_place && lead <= sizeof(saved) && room + r * row_bytes >= lead;
    JSAMPROW target = direct ? row - lead : scratch->data();
    if (direct) std::memcpy(saved, row - lead, lead);
    if (jpeg_read_scanlines(&cinfo, &target, 1) != 1) {
      jpeg_destroy_decompress(&cinfo);
      return "premature end of JPEG data";
    }
    if (direct) {
      std::memcpy(row - lead, saved, lead);
    } else if (cmyk) {
      CmykToRgb(scratch->data() + 4 * lead_pixels, window.width, cinfo.saw_Adobe_marker, row);
    } else {
      std::memcpy(row, scratch->data() + lead, row_bytes);
    }
    ReverseRow(row, window.width, window.flip, window.reverse_channels);
  }
  if (window.y + window.height == image_height) {
    // As TensorFlow's decoder: a window down to the last row finishes decompressing, which reads
    // the markers after the scan up to EOI (a missing EOI is an error); it skips the rows below
    // any other window unread.
    jpeg_finish_decompress(&cinfo);
  } else {
    jpeg_abort_decompress(&cinfo);
  }
  jpeg_destroy_decompress(&cinfo);
  return "";
}

class DecodeCropClipOp : public OpKernel {
 public:
  explicit DecodeCropClipOp(OpKernelConstruction* context) : OpKernel(context) {}

  void Compute(OpKernelContext* context) override {
    const Tensor& contents = context->input(0);
    const Tensor& crop_window = context->input(1);
    OP_REQUIRES(context, contents.dims() == 1,
                errors::InvalidArgument("Expected contents of shape [T]. Received: ", contents.shape().DebugString()));
    OP_REQUIRES(context, crop_window.dims() == 1 && crop_window.NumElements() == 4,
                errors::InvalidArgument("Expected crop_window of shape [4]. Received: ",
                                        crop_window.shape().DebugString()));
    const auto box = crop_window.flat<int32_t>();
    const Window window{box(0), box(1), box(2), box(3), context->input(2).scalar<bool>()(),
                        context->input(3).scalar<bool>()()};
    OP_REQUIRES(context, window.height > 0 && window.width > 0,
                errors::InvalidArgument("Expected a crop window of positive height and width. Received: [",
                                        window.y, ", ", window.x, ", ", window.height, ", ", window.width, "]"));
    const int64_t num_frames = contents.dim_size(0);
    Tensor* clip = nullptr;
    OP_REQUIRES_OK(context, context->allocate_output(
                                0, TensorShape({num_frames, window.height, window.width, 3}), &clip));
    const auto frames = contents.flat<tstring>();
    uint8_t* base = clip->flat<uint8_t>().data();
    const size_t frame_bytes = 3 * static_cast<size_t>(window.height) * window.width;
    std::vector<uint8_t> scratch;
    for (int64_t t = 0; t < num_frames; ++t) {
      const std::string error = DecodeWindow(frames(t), window, base + t * frame_bytes, t * frame_bytes, &scratch);
      OP_REQUIRES(context, error.empty(),
                  errors::InvalidArgument("Invalid JPEG data or crop window in frame ", t, " of the clip: ", error));
    }
  }
};

}  // namespace

REGISTER_OP("P3dDecodeCropClip")
    .Input("contents: string")
    .Input("crop_window: int32")
    .Input("flip: bool")
    .Input("reverse_channels: bool")
    .Output("clip: uint8")
    .SetShapeFn([](::tensorflow::shape_inference::InferenceContext* c) {
      c->set_output(0, c->MakeShape({c->Dim(c->input(0), 0), c->UnknownDim(), c->UnknownDim(), 3}));
      return absl::OkStatus();
    });

REGISTER_KERNEL_BUILDER(Name("P3dDecodeCropClip").Device(::tensorflow::DEVICE_CPU), DecodeCropClipOp);
