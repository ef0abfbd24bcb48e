# frozen_string_literal: true

require "vagrant"

module VagrantPlugins
  module Ctd
    # One-line Vagrant errors: the text is ctd's own error (or ours), never a stack trace.
    class CtdError < Vagrant::Errors::VagrantError
      def initialize(message)
        @ctd_message = message
        super()
      end

      def error_message
        "ctd: #{@ctd_message}"
      end
    end
  end
end
