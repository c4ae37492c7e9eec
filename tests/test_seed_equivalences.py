"""The seed notebook's equivalences: a Linear layer is a conv whose kernel covers its input, or a 1x1 conv on the
input reshaped to (N, C*H*W, 1, 1); and a 1x1 conv is a Linear layer applied to the channels at every position."""

import torch
from torch import nn

TOLERANCE = 1e-5


def test_notebook_example_linear_equals_conv_with_kernel_covering_input():
    inputs = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    fc = nn.Linear(4, 2)
    conv = nn.Conv2d(1, 2, kernel_size=2)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.1, 1.2, 1.3, 1.4], [1.5, 1.6, 1.7, 1.8]]))
        fc.bias.copy_(torch.tensor([1.9, 2.0]))
        conv.weight.copy_(fc.weight.view(2, 1, 2, 2))
        conv.bias.copy_(fc.bias)
        linear_out = torch.relu(fc(inputs.view(-1, 4)))
        conv_out = torch.relu(conv(inputs)).view(-1, 2)
    assert torch.allclose(linear_out, torch.tensor([[14.9, 19.0]]), atol=TOLERANCE)
    assert (linear_out - conv_out).abs().max() <= TOLERANCE


def test_linear_equals_conv_with_kernel_covering_multichannel_input():
    torch.manual_seed(0)
    x = torch.randn(5, 8, 7, 7)
    fc = nn.Linear(8 * 7 * 7, 16)
    conv = nn.Conv2d(8, 16, kernel_size=7)
    with torch.no_grad():
        # torch.flatten orders features as c*49 + h*7 + w, the memory order of a (out, C, 7, 7) kernel
        conv.weight.copy_(fc.weight.view(16, 8, 7, 7))
        conv.bias.copy_(fc.bias)
        assert (fc(torch.flatten(x, 1)) - conv(x).flatten(1)).abs().max() <= TOLERANCE


def test_linear_equals_1x1_conv_on_reshaped_input():
    torch.manual_seed(1)
    x = torch.randn(5, 8, 7, 7)
    fc = nn.Linear(8 * 7 * 7, 16)
    conv = nn.Conv2d(8 * 7 * 7, 16, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(fc.weight.view(16, -1, 1, 1))
        conv.bias.copy_(fc.bias)
        reshaped = x.reshape(5, -1, 1, 1)
        assert (fc(torch.flatten(x, 1)) - conv(reshaped).flatten(1)).abs().max() <= TOLERANCE


def test_1x1_conv_equals_linear_on_channels():
    torch.manual_seed(2)
    conv = nn.Conv2d(16, 33, kernel_size=1)
    x = torch.randn(20, 16, 50, 100)
    fc = nn.Linear(16, 33)
    with torch.no_grad():
        fc.weight.copy_(conv.weight.squeeze())
        fc.bias.copy_(conv.bias)
        conv_out = conv(x)
        linear_out = fc(x.transpose(1, 3)).transpose(1, 3)
    assert conv_out.shape == (20, 33, 50, 100)
    assert (linear_out - conv_out).abs().max() <= TOLERANCE
