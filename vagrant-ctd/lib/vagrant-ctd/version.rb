# frozen_string_literal: true

module VagrantPlugins
  module Ctd
    VERSION = "0.1.0"
  end
end
